//! Bounds on the work one read may ask for, whatever the protocol: groups named more than once
//! are merged into one, and the read's cost (the most feature values its answer can hold) has
//! a ceiling, checked before anything is read.

use std::collections::{HashMap, HashSet};

use cellar_spec::{FeatureGroup, GroupKind};

use crate::error::ServeError;
use crate::service::GroupRequest;

/// Merges the requests of a group named more than once into the first one: their feature
/// subsets are united in the order asked (all features if either asks for all), repeated
/// features are asked once. Each request keeps the index it had in the request, for messages.
///
/// Repeats must agree on `top_n` and `window`: two reads of one series bounded differently
/// cannot be answered as one.
pub fn merge_repeated(
    requests: Vec<GroupRequest>,
) -> Result<Vec<(usize, GroupRequest)>, ServeError> {
    let mut merged: Vec<(usize, GroupRequest)> = Vec::with_capacity(requests.len().min(64));
    // Group name -> position in `merged`; and the features each merged request names.
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut named: Vec<HashSet<String>> = Vec::new();
    for (i, mut r) in requests.into_iter().enumerate() {
        let Some(&at) = position.get(&r.group) else {
            let mut seen = HashSet::new();
            if let Some(features) = &mut r.features {
                features.retain(|f| seen.insert(f.clone()));
            }
            position.insert(r.group.clone(), merged.len());
            named.push(seen);
            merged.push((i, r));
            continue;
        };
        let (first, kept) = &mut merged[at];
        if kept.top_n != r.top_n || kept.window != r.window {
            return Err(ServeError::invalid(format!(
                "groups[{i}]: `{}` is asked for again, with another `top_n` or `window` than at \
                 groups[{first}]; name each group once",
                r.group
            )));
        }
        match (&mut kept.features, r.features) {
            (None, _) => {}
            (kept_features @ Some(_), None) => *kept_features = None,
            (Some(kept_features), Some(more)) => {
                let seen = &mut named[at];
                kept_features.extend(more.into_iter().filter(|f| seen.insert(f.clone())));
            }
        }
    }
    Ok(merged)
}

/// Records one entity row of a group may answer: the `top_n` asked for a time series (as
/// asked, not cut to the group's retention, so that a client can tell a read's cost from the
/// request alone); one for an attribute group.
pub fn records_per_row(spec: &FeatureGroup, top_n: usize) -> u64 {
    match spec.kind {
        GroupKind::Attribute => 1,
        GroupKind::Timeseries => top_n as u64,
    }
}

/// The cost of a read: the most feature values its answer can hold, that is entity rows x
/// records per row x features, summed over the groups asked for. Memory and time of a read
/// (store reads, the response built and encoded) grow with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCost {
    rows: u64,
    groups: u64,
    /// Feature values of one entity row, summed over the groups.
    per_row: u64,
}

impl RequestCost {
    /// A read of `rows` entity rows, before any group is added.
    pub fn new(rows: usize) -> RequestCost {
        RequestCost {
            rows: rows as u64,
            ..RequestCost::default()
        }
    }

    /// Adds a group whose rows answer up to `records` records of `features` values each.
    pub fn add(&mut self, records: u64, features: usize) {
        self.groups += 1;
        self.per_row = self
            .per_row
            .saturating_add(records.saturating_mul(features.max(1) as u64));
    }

    /// The most feature values the answer can hold.
    pub fn values(&self) -> u64 {
        self.rows.saturating_mul(self.per_row)
    }

    /// Refuses a read that costs more than `ceiling`, saying what it costs and what the
    /// ceiling is.
    pub fn check(&self, ceiling: u64) -> Result<(), ServeError> {
        let values = self.values();
        if values <= ceiling {
            return Ok(());
        }
        Err(ServeError::TooLarge(format!(
            "request too costly: {} entity rows x {} feature values a row (records x features, \
             over {} groups) = {values} feature values, over the ceiling of {ceiling} \
             (server.max_request_cost); ask for fewer entities, groups or features, or a \
             smaller top_n",
            self.rows, self.per_row, self.groups
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, features: Option<&[&str]>, top_n: Option<usize>) -> GroupRequest {
        GroupRequest {
            group: name.to_owned(),
            features: features.map(|fs| fs.iter().map(|f| f.to_string()).collect()),
            top_n,
            window: None,
        }
    }

    #[test]
    fn repeats_merge_into_the_first_with_features_united() {
        let merged = merge_repeated(vec![
            group("a", Some(&["x", "x"]), None),
            group("b", None, Some(5)),
            group("a", Some(&["y", "x"]), None),
            group("b", None, Some(5)),
        ])
        .unwrap();
        let shape: Vec<(usize, &str, Option<Vec<String>>)> = merged
            .iter()
            .map(|(i, r)| (*i, r.group.as_str(), r.features.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, "a", Some(vec!["x".to_owned(), "y".to_owned()])),
                (1, "b", None)
            ]
        );
        // All features, asked for once, stays all.
        let merged =
            merge_repeated(vec![group("a", Some(&["x"]), None), group("a", None, None)]).unwrap();
        assert_eq!(merged[0].1.features, None);
    }

    #[test]
    fn repeats_with_other_bounds_are_refused_naming_both() {
        let err = merge_repeated(vec![
            group("a", None, Some(5)),
            group("b", None, None),
            group("a", None, Some(6)),
        ])
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("groups[2]") && message.contains("groups[0]"),
            "{message}"
        );
    }

    #[test]
    fn cost_is_rows_times_records_times_features() {
        let mut cost = RequestCost::new(1000);
        for _ in 0..300 {
            cost.add(1000, 2);
        }
        assert_eq!(cost.values(), 600_000_000);
        let message = cost.check(1_000_000).unwrap_err().to_string();
        assert!(
            message.contains("600000000") && message.contains("1000000"),
            "{message}"
        );
        assert!(cost.check(600_000_000).is_ok());
        let mut huge = RequestCost::new(usize::MAX);
        huge.add(u64::MAX, usize::MAX);
        assert_eq!(huge.values(), u64::MAX);
    }
}
