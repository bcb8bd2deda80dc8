//! Causeway test fixtures and the local lab.
