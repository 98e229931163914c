//! A real HAProxy for tests (work in progress).
