//! Placeholder until the verifier issue lands.
