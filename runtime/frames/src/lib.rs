//! fieldtune-frames
