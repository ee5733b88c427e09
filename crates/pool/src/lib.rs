//! Service-pool allocator core (in progress).
