//! kennel-supervisord: the daemon that owns environments (API, registry/reconcile, health monitor, events).
