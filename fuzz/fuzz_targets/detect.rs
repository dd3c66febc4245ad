//! Arbitrary bytes through the detection side, as `tollgate detect` and the
//! agent run it: `tollgate_detect::fuzz_one` parses them as pipelined
//! requests and as a response, runs the default engine (every detector and
//! the verdict) and a stateful API guard whose policy reaches every check.
//! None of it may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate_detect::fuzz_one(data));
