#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| legate::fuzzing::h1_response(data));
