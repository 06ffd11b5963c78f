//! kennel-policy: the policy model, parser, matcher, address classifier and reload. No network I/O.
