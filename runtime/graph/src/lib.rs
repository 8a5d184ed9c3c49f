//! fieldtune-graph
