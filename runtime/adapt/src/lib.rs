//! fieldtune-adapt
