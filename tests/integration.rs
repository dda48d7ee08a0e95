//! One test binary for the whole crate (each file under tests/ would link separately, which on a
//! 2-core machine costs minutes per file): the modules below hold the tests.
mod it;
