//! fieldtune-augment
