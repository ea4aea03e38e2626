//! `check unix:...`, `wait unix:...`, `ports --unix`.
