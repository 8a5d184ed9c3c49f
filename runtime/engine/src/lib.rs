//! fieldtune-engine
