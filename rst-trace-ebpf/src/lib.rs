#![no_std]
// Intentionally empty: aya-build needs a library target to depend on.
