//! HAProxy as a router (work in progress).
