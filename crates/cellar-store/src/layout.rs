//! Records stored under an earlier layout of their group, served under the current one.
//!
//! An allowed breaking apply never reinterprets stored bytes: a retyped feature takes a new
//! position and a layout change moves the group to a new storage generation. What was stored
//! before stays readable all the same, converted where the conversion keeps its meaning:
//! - a retyped feature whose new position holds nothing is served its old value, converted to
//!   the new type ([`Value::convert`]); writers clear the old position with the new one;
//! - an entity the new generation holds nothing for is served from the previous generation's
//!   records, laid out anew by feature name: an attribute record becomes a series of one, a
//!   series' newest record an attribute record; a series is the newer generation's records
//!   followed by the older's.

use cellar_spec::{EntityKey, FeatureGroup, GroupKind, Value};

use crate::{Record, RecordReader, Result, TimeseriesQuery};

/// The newest record of each of `entities` in `previous` (the generation before `to`), laid
/// out for `to`, read through `reader`.
pub async fn previous_records(
    reader: &dyn RecordReader,
    previous: &FeatureGroup,
    to: &FeatureGroup,
    entities: &[EntityKey],
) -> Result<Vec<Option<Record>>> {
    let old: Vec<Option<Record>> = match previous.kind {
        GroupKind::Attribute => reader.get_attributes(previous, entities).await?,
        GroupKind::Timeseries => {
            let newest = TimeseriesQuery {
                top_n: 1,
                since: None,
            };
            reader
                .scan_timeseries(previous, entities, newest)
                .await?
                .into_iter()
                .map(|series| series.into_iter().next())
                .collect()
        }
    };
    let relayout = Relayout::new(previous, to);
    Ok(old
        .iter()
        .map(|r| r.as_ref().map(|r| relayout.apply(r)))
        .collect())
}

/// The records of each of `entities` in `previous` (the generation before `to`) as `query`
/// bounds them, newest first, laid out for `to`: an attribute record is a series of one.
pub async fn previous_series(
    reader: &dyn RecordReader,
    previous: &FeatureGroup,
    to: &FeatureGroup,
    entities: &[EntityKey],
    query: TimeseriesQuery,
) -> Result<Vec<Vec<Record>>> {
    let old: Vec<Vec<Record>> = match previous.kind {
        GroupKind::Timeseries => reader.scan_timeseries(previous, entities, query).await?,
        GroupKind::Attribute => reader
            .get_attributes(previous, entities)
            .await?
            .into_iter()
            .map(|r| {
                r.filter(|r| query.since.is_none_or(|since| r.event_time >= since))
                    .into_iter()
                    .collect()
            })
            .collect(),
    };
    let relayout = Relayout::new(previous, to);
    Ok(old
        .iter()
        .map(|series| series.iter().map(|r| relayout.apply(r)).collect())
        .collect())
}

/// Gives each live position of `retyped` (live, predecessor) that holds nothing the value of
/// its predecessor, converted.
pub fn upgrade(spec: &FeatureGroup, retyped: &[(usize, usize)], record: &mut Record) {
    for &(live, old) in retyped {
        if !matches!(record.values.get(live), None | Some(Value::Null)) {
            continue;
        }
        let Some(value) = record.values.get(old).filter(|v| **v != Value::Null) else {
            continue;
        };
        let value = value.convert(spec.features[live].value_type);
        if record.values.len() <= live {
            record.values.resize(live + 1, Value::Null);
        }
        record.values[live] = value;
    }
}

/// `record`, stored for `from` (an earlier generation of the group), laid out for `to`: each
/// live feature of `to` takes the value (and the aggregate state) of the live feature of the
/// same name in `from`, converted to its type; the others are null. The applied offsets stay,
/// so an event already applied to the old record is not applied again.
pub fn relayout(record: &Record, from: &FeatureGroup, to: &FeatureGroup) -> Record {
    Relayout::new(from, to).apply(record)
}

/// Where each position of `to` takes its value from in a record of `from`, worked out once
/// for all the records of a read.
struct Relayout<'a> {
    from: &'a FeatureGroup,
    to: &'a FeatureGroup,
    /// Per position of `to`: the live position of `from` with its name.
    sources: Vec<Option<usize>>,
    /// Per position of `from`: the retired slot its value was kept in before a type change.
    predecessors: Vec<Option<usize>>,
}

impl<'a> Relayout<'a> {
    fn new(from: &'a FeatureGroup, to: &'a FeatureGroup) -> Relayout<'a> {
        let sources = to
            .features
            .iter()
            .map(|f| (!f.retired).then(|| from.feature_index(&f.name)).flatten())
            .collect();
        let mut predecessors = vec![None; from.features.len()];
        for (live, old) in from.predecessors() {
            predecessors[live] = Some(old);
        }
        Relayout {
            from,
            to,
            sources,
            predecessors,
        }
    }

    fn apply(&self, record: &Record) -> Record {
        let values = self
            .to
            .features
            .iter()
            .zip(&self.sources)
            .map(|(f, source)| {
                let Some(i) = *source else {
                    return Value::Null;
                };
                let stored_as = self.from.features[i].value_type;
                match record.values.get(i) {
                    Some(v) if *v != Value::Null => {
                        if stored_as == f.value_type {
                            v.clone()
                        } else {
                            v.convert(f.value_type)
                        }
                    }
                    // Retyped in `from` and not written since: its older value, converted.
                    _ => self.predecessors[i]
                        .and_then(|p| record.values.get(p))
                        .filter(|v| **v != Value::Null)
                        .map_or(Value::Null, |v| v.convert(stored_as).convert(f.value_type)),
                }
            })
            .collect();
        // An aggregate's state describes its own window, and starts again if that changed.
        let mut state: Vec<Value> = self
            .sources
            .iter()
            .map(|source| {
                source
                    .and_then(|i| record.state.get(i).cloned())
                    .unwrap_or(Value::Null)
            })
            .collect();
        while state.last() == Some(&Value::Null) {
            state.pop();
        }
        Record {
            event_time: record.event_time,
            values,
            applied: record.applied.clone(),
            state,
        }
    }
}

/// Two series of one entity, each newest first, merged newest first up to `top_n` records;
/// where both hold a record of the same event time, `newer`'s is kept.
pub fn merge_series(newer: Vec<Record>, older: Vec<Record>, top_n: usize) -> Vec<Record> {
    if older.is_empty() {
        return newer;
    }
    let mut out = Vec::with_capacity((newer.len() + older.len()).min(top_n));
    let mut newer = newer.into_iter().peekable();
    let mut older = older.into_iter().peekable();
    while out.len() < top_n {
        let times = (
            newer.peek().map(|r| r.event_time),
            older.peek().map(|r| r.event_time),
        );
        let take_newer = match times {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(n), Some(o)) => {
                if n == o {
                    older.next();
                }
                n >= o
            }
        };
        let next = if take_newer {
            newer.next()
        } else {
            older.next()
        };
        out.extend(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_spec::{Feature, Retention, ScalarType, ServingPolicy, ValueType};

    const INT: ValueType = ValueType::Scalar(ScalarType::Int64);
    const FLOAT: ValueType = ValueType::Scalar(ScalarType::Float64);
    const STRING: ValueType = ValueType::Scalar(ScalarType::String);

    fn group(kind: GroupKind, features: Vec<Feature>) -> FeatureGroup {
        FeatureGroup {
            name: "profile".into(),
            entity: "user".into(),
            kind,
            features,
            retention: Retention::default(),
            serving: ServingPolicy::default(),
            max_record_bytes: 8192,
            freshness: None,
            push_sources: Vec::new(),
            description: None,
            generation: 0,
            previous: None,
        }
    }

    fn retired(name: &str, value_type: ValueType) -> Feature {
        Feature {
            retired: true,
            ..Feature::new(name, value_type)
        }
    }

    #[test]
    fn a_retyped_feature_serves_its_old_value_converted_until_written() {
        let spec = group(
            GroupKind::Attribute,
            vec![retired("age", INT), Feature::new("age", FLOAT)],
        );
        let retyped: Vec<_> = spec.predecessors().collect();
        let mut record = Record::new(1, vec![Value::Int64(33)]);
        upgrade(&spec, &retyped, &mut record);
        assert_eq!(record.values, [Value::Int64(33), Value::Float64(33.0)]);

        let mut written = Record::new(2, vec![Value::Null, Value::Float64(34.5)]);
        upgrade(&spec, &retyped, &mut written);
        assert_eq!(written.values[1], Value::Float64(34.5));
    }

    #[test]
    fn records_of_an_earlier_generation_are_laid_out_by_feature_name() {
        let from = group(
            GroupKind::Attribute,
            vec![
                Feature::new("country", STRING),
                retired("age", STRING),
                Feature::new("age", INT),
                Feature::new("gone", INT),
            ],
        );
        let to = group(
            GroupKind::Timeseries,
            vec![
                Feature::new("age", FLOAT),
                Feature::new("country", STRING),
                Feature::new("new", INT),
            ],
        );
        // `age` was retyped in the old generation and never written since: its old text is
        // converted twice over.
        let stored = Record::new(
            5,
            vec![
                Value::String("NZ".into()),
                Value::String("33".into()),
                Value::Null,
                Value::Int64(1),
            ],
        );
        let moved = relayout(&stored, &from, &to);
        assert_eq!(moved.event_time, 5);
        assert_eq!(
            moved.values,
            [
                Value::Float64(33.0),
                Value::String("NZ".into()),
                Value::Null
            ]
        );
    }

    #[test]
    fn series_merge_newest_first_and_the_newer_generation_wins_ties() {
        let r = |t: i64, v: i64| Record::new(t, vec![Value::Int64(v)]);
        let merged = merge_series(vec![r(9, 1), r(5, 1)], vec![r(7, 0), r(5, 0), r(1, 0)], 10);
        let got: Vec<(i64, Value)> = merged
            .into_iter()
            .map(|r| (r.event_time, r.values[0].clone()))
            .collect();
        assert_eq!(
            got,
            [
                (9, Value::Int64(1)),
                (7, Value::Int64(0)),
                (5, Value::Int64(1)),
                (1, Value::Int64(0)),
            ]
        );
        assert_eq!(
            merge_series(vec![r(9, 1)], vec![r(7, 0), r(1, 0)], 2).len(),
            2
        );
    }
}
