//! Image store (being written).
