//! Drills run by federators (docs/drills.md): Drill resources (`controller`, Kubernetes mode),
//! the clients that observe them from each cluster (`observer`), and the analysis both and
//! `causeway drill` share (`report`).

pub(crate) mod controller;
pub(crate) mod observer;
pub(crate) mod report;
