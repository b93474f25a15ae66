//! Fault injection for real topologies: partitions and packet faults inside network namespaces,
//! process kill/pause/restart, and clock skew through libfaketime.
//!
//! Not built yet: this is the subject of the chaos issue. The crate exists so that the workspace
//! has its final shape.
