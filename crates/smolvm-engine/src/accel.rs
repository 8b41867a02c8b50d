//! Accel selection (being written).
