//! `GET /v1/doctor`: the daemon's side of `kennel doctor`.
