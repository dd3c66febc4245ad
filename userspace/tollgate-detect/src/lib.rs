//! Tollgate's detection engine (pure: no I/O, no kernel, no async runtime).
