//! sluice-cni library (being written).
