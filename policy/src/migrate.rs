//! Translating seed lists and Tinyproxy filter files (regex lines) into native lists.
