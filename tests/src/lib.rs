//! Helpers for the root-only tests.
