//! PKCS#11 key store.
