//! The one place that chooses the logging backend: `defmt` when its feature is on, else `log`
//! when its feature is on, else nothing (arguments are still evaluated by reference so that
//! no variable goes unused). Format strings must use only `{}` and `{:?}`, which both
//! backends accept; arguments must implement `defmt::Format` and `Debug`/`Display`.
#![allow(unused_macros)]

#[cfg(feature = "defmt")]
macro_rules! debug {
    ($($t:tt)*) => { ::defmt::debug!($($t)*) };
}
#[cfg(feature = "defmt")]
macro_rules! info {
    ($($t:tt)*) => { ::defmt::info!($($t)*) };
}
#[cfg(feature = "defmt")]
macro_rules! warn {
    ($($t:tt)*) => { ::defmt::warn!($($t)*) };
}
#[cfg(feature = "defmt")]
macro_rules! error {
    ($($t:tt)*) => { ::defmt::error!($($t)*) };
}

#[cfg(all(feature = "log", not(feature = "defmt")))]
macro_rules! debug {
    ($($t:tt)*) => { ::log::debug!($($t)*) };
}
#[cfg(all(feature = "log", not(feature = "defmt")))]
macro_rules! info {
    ($($t:tt)*) => { ::log::info!($($t)*) };
}
#[cfg(all(feature = "log", not(feature = "defmt")))]
macro_rules! warn {
    ($($t:tt)*) => { ::log::warn!($($t)*) };
}
#[cfg(all(feature = "log", not(feature = "defmt")))]
macro_rules! error {
    ($($t:tt)*) => { ::log::error!($($t)*) };
}

#[cfg(not(any(feature = "log", feature = "defmt")))]
macro_rules! debug {
    ($s:literal $(, $x:expr)* $(,)?) => {{ let _ = ($(&$x),*); }};
}
#[cfg(not(any(feature = "log", feature = "defmt")))]
macro_rules! info {
    ($s:literal $(, $x:expr)* $(,)?) => {{ let _ = ($(&$x),*); }};
}
#[cfg(not(any(feature = "log", feature = "defmt")))]
macro_rules! warn {
    ($s:literal $(, $x:expr)* $(,)?) => {{ let _ = ($(&$x),*); }};
}
#[cfg(not(any(feature = "log", feature = "defmt")))]
macro_rules! error {
    ($s:literal $(, $x:expr)* $(,)?) => {{ let _ = ($(&$x),*); }};
}
