//! nginx as a router (work in progress).
