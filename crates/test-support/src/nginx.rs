//! A real nginx for tests (work in progress).
