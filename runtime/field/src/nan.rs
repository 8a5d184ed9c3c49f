//! serde_json writes a non-finite `f64` as `null`; these read such a `null` back as NaN, so
//! a number that was NaN or infinite when it was logged does not make its line unreadable.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// A number, or NaN for `null`.
pub(crate) fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A map of numbers, NaN for each `null`.
pub(crate) fn map_f64_or_nan<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    Ok(BTreeMap::<String, Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}
