//! Privileged integration tests of keyturn against real kernels.
