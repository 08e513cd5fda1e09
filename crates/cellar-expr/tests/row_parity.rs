//! Expressions walked a row at a time give what DataFusion gives, value for value and error
//! for error, over random inputs full of the edge cases: nulls, zero, the ends of int64, NaN,
//! negative zero and infinities, empty and null lists, lists holding nulls, negative times;
//! and walked over cells borrowed from values, what they give walked over Arrow columns.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::DataType;
use cellar_expr::cells::CellColumn;
use cellar_expr::column::{Cell, Column};
use cellar_expr::{Expression, Input, RowBatch, Scope};
use cellar_spec::{ScalarType, Value, ValueType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const INT: ValueType = ValueType::Scalar(ScalarType::Int64);
const FLOAT: ValueType = ValueType::Scalar(ScalarType::Float64);
const TEXT: ValueType = ValueType::Scalar(ScalarType::String);
const BOOL: ValueType = ValueType::Scalar(ScalarType::Bool);
const TIME: ValueType = ValueType::Scalar(ScalarType::Timestamp);

fn scope() -> Scope {
    Scope::new(vec![
        Input::new("i", INT),
        Input::new("j", INT),
        Input::new("f", FLOAT),
        Input::new("g", FLOAT),
        Input::new("s", TEXT),
        Input::new("t", TEXT),
        Input::new("b", BOOL),
        Input::new("ts", TIME),
        Input::new("li", ValueType::List(ScalarType::Int64)),
        Input::new("lf", ValueType::List(ScalarType::Float64)),
        Input::new("ls", ValueType::List(ScalarType::String)),
        Input::new("lt", ValueType::List(ScalarType::Timestamp)),
        Input::new("v", ValueType::Vector(3)),
        Input::new("w", ValueType::Vector(3)),
        Input::qualified("user_profile", "age", INT),
        Input::qualified("article_stats", "ctr_7d", FLOAT),
        Input::qualified(
            "recent_clicked_articles",
            "article_id",
            ValueType::List(ScalarType::String),
        ),
        Input::qualified(
            "recent_clicked_articles",
            "event_time",
            ValueType::List(ScalarType::Timestamp),
        ),
    ])
    .unwrap()
}

/// (text, type, whether it is walked a row at a time)
const EXPRESSIONS: &[(&str, ValueType, bool)] = &[
    ("i + j", INT, true),
    ("i - j", INT, true),
    ("i * j", INT, true),
    ("i / j", INT, true),
    ("i % j", INT, true),
    ("-i", INT, true),
    ("i + 1", INT, true),
    ("f + g", FLOAT, true),
    ("f - g * 2.5", FLOAT, true),
    ("f / g", FLOAT, true),
    ("f % g", FLOAT, true),
    ("-f", FLOAT, true),
    ("i + 1.5", FLOAT, true),
    ("f * i", FLOAT, true),
    ("i < j", BOOL, true),
    ("i = j", BOOL, true),
    ("i >= 30", BOOL, true),
    ("f < g", BOOL, true),
    ("f = g", BOOL, true),
    ("f <> g", BOOL, true),
    ("f <= 0.0", BOOL, true),
    ("s < t", BOOL, true),
    ("s = t", BOOL, true),
    ("s = 'a'", BOOL, true),
    ("ts < now()", BOOL, true),
    ("ts >= now()", BOOL, true),
    ("b = (i > j)", BOOL, true),
    ("i > 3 AND f < 1.0", BOOL, true),
    ("b OR i > 0", BOOL, true),
    ("b AND (i / j > 1)", BOOL, true),
    ("NOT b", BOOL, true),
    ("i IS NULL", BOOL, true),
    ("s IS NOT NULL", BOOL, true),
    ("CASE WHEN i < 30 THEN 1.2 ELSE 1.0 END * f", FLOAT, true),
    (
        "CASE i WHEN 1 THEN 'one' WHEN 2 THEN 'two' ELSE s END",
        TEXT,
        true,
    ),
    ("CASE WHEN b THEN i END", INT, true),
    (
        "CASE f WHEN 0.0 THEN 'zero' WHEN g THEN 'g' ELSE 'other' END",
        TEXT,
        true,
    ),
    ("CASE WHEN j = 0 THEN 0 ELSE i / j END", INT, true),
    ("cardinality(li)", INT, true),
    ("cardinality(ls)", INT, true),
    ("array_has(ls, s)", BOOL, true),
    ("array_has(li, i)", BOOL, true),
    ("array_has(lf, f)", BOOL, true),
    ("array_has(lt, ts)", BOOL, true),
    ("array_has(ls, 'a')", BOOL, true),
    ("array_element(li, 1)", INT, true),
    ("array_element(li, -1)", INT, true),
    ("array_element(ls, 0)", TEXT, true),
    ("array_element(li, i)", INT, true),
    ("array_element(lt, j)", TIME, true),
    ("to_unixtime(ts)", INT, true),
    (
        "to_unixtime(now()) - to_unixtime(array_element(recent_clicked_articles.event_time, 1))",
        INT,
        true,
    ),
    (
        "array_has(recent_clicked_articles.article_id, s)",
        BOOL,
        true,
    ),
    ("cardinality(recent_clicked_articles.article_id)", INT, true),
    (
        "article_stats.ctr_7d * CASE WHEN user_profile.age < 30 THEN 1.2 ELSE 1.0 END",
        FLOAT,
        true,
    ),
    (
        "haversine_km(f, g, user_profile.age, article_stats.ctr_7d)",
        FLOAT,
        true,
    ),
    ("haversine_km(37.5, 127.0, f, g)", FLOAT, true),
    ("haversine_km(i, j, 0, 0) < 100.0", BOOL, true),
    ("cosine_similarity(lf, lf)", FLOAT, true),
    ("cosine_similarity(li, lf)", FLOAT, true),
    ("cosine_similarity(v, w)", FLOAT, true),
    ("cosine_similarity(v, lf)", FLOAT, true),
    ("cardinality(v)", INT, true),
    ("CASE WHEN b THEN v ELSE w END", ValueType::Vector(3), true),
    // Simplified into a CASE when compiled.
    ("coalesce(i, j, 0)", INT, true),
    // What DataFusion alone evaluates: the answers must agree all the same.
    ("lower(s)", TEXT, false),
    ("i + cardinality(li)", INT, false),
    ("abs(f)", FLOAT, false),
    ("array_element(v, 1)", FLOAT, false),
];

fn int(rng: &mut StdRng) -> Option<i64> {
    if rng.random_bool(0.15) {
        return None;
    }
    Some(match rng.random_range(0..10) {
        0 => 0,
        1 => 1,
        2 => -1,
        3 => i64::MAX,
        4 => i64::MIN,
        5 => 30,
        6 => rng.random_range(-5..6),
        7 => rng.random_range(-3_000_000_000i64..3_000_000_000),
        _ => rng.random(),
    })
}

fn float(rng: &mut StdRng) -> Option<f64> {
    if rng.random_bool(0.15) {
        return None;
    }
    Some(match rng.random_range(0..10) {
        0 => 0.0,
        1 => -0.0,
        2 => f64::NAN,
        3 => f64::INFINITY,
        4 => f64::NEG_INFINITY,
        5 => 1e300,
        6 => 1.5,
        _ => rng.random_range(-100.0..100.0),
    })
}

fn text(rng: &mut StdRng) -> Option<String> {
    if rng.random_bool(0.15) {
        return None;
    }
    Some(["", "a", "b", "ab", "é", "B"][rng.random_range(0..6)].to_owned())
}

fn time(rng: &mut StdRng) -> Option<i64> {
    if rng.random_bool(0.15) {
        return None;
    }
    Some(match rng.random_range(0..5) {
        0 => -1_500,
        1 => -999,
        2 => 0,
        _ => rng.random_range(1_600_000_000_000i64..1_800_000_000_000),
    })
}

/// A vector: null, or three numbers (now and then two, which a stored vector never has).
fn vector(rng: &mut StdRng) -> Option<Vec<f32>> {
    if rng.random_bool(0.1) {
        return None;
    }
    let n = if rng.random_bool(0.1) { 2 } else { 3 };
    Some(
        (0..n)
            .map(|_| match rng.random_range(0..6) {
                0 => 0.0,
                1 => -0.0,
                2 => f32::NAN,
                _ => rng.random_range(-2.0..2.0),
            })
            .collect(),
    )
}

/// A list of `item`s: null, empty, or up to five elements, some of them null.
fn list<T>(rng: &mut StdRng, item: impl Fn(&mut StdRng) -> Option<T>) -> Option<Vec<Option<T>>> {
    if rng.random_bool(0.1) {
        return None;
    }
    let n = rng.random_range(0..6);
    Some((0..n).map(|_| item(rng)).collect())
}

fn batch(scope: &Scope, rows: usize, seed: u64) -> RecordBatch {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut columns: Vec<ArrayRef> = Vec::new();
    for field in scope.schema().fields() {
        let column: ArrayRef = match field.data_type() {
            DataType::Int64 => Arc::new(
                (0..rows)
                    .map(|_| int(&mut rng))
                    .collect::<arrow_array::Int64Array>(),
            ),
            DataType::Float64 => Arc::new(
                (0..rows)
                    .map(|_| float(&mut rng))
                    .collect::<arrow_array::Float64Array>(),
            ),
            DataType::Utf8 => Arc::new(
                (0..rows)
                    .map(|_| text(&mut rng))
                    .collect::<arrow_array::StringArray>(),
            ),
            DataType::Boolean => Arc::new(
                (0..rows)
                    .map(|_| (!rng.random_bool(0.15)).then(|| rng.random_bool(0.5)))
                    .collect::<arrow_array::BooleanArray>(),
            ),
            DataType::Timestamp(_, _) if field.name() == "@now" => Arc::new(
                arrow_array::TimestampMillisecondArray::from(vec![1_700_000_000_000; rows])
                    .with_timezone("UTC"),
            ),
            DataType::Timestamp(_, _) => Arc::new(
                (0..rows)
                    .map(|_| time(&mut rng))
                    .collect::<arrow_array::TimestampMillisecondArray>()
                    .with_timezone("UTC"),
            ),
            DataType::List(item) => match item.data_type() {
                DataType::Int64 => {
                    let mut b = ListBuilder::new(Int64Builder::new()).with_field(Arc::clone(item));
                    for _ in 0..rows {
                        b.append_option(list(&mut rng, int));
                    }
                    Arc::new(b.finish())
                }
                DataType::Float64 => {
                    let mut b =
                        ListBuilder::new(Float64Builder::new()).with_field(Arc::clone(item));
                    for _ in 0..rows {
                        b.append_option(list(&mut rng, float));
                    }
                    Arc::new(b.finish())
                }
                DataType::Utf8 => {
                    let mut b = ListBuilder::new(StringBuilder::new()).with_field(Arc::clone(item));
                    for _ in 0..rows {
                        b.append_option(list(&mut rng, text));
                    }
                    Arc::new(b.finish())
                }
                DataType::Timestamp(_, _) => {
                    let mut b =
                        ListBuilder::new(TimestampMillisecondBuilder::new().with_timezone("UTC"))
                            .with_field(Arc::clone(item));
                    for _ in 0..rows {
                        b.append_option(list(&mut rng, time));
                    }
                    Arc::new(b.finish())
                }
                DataType::Float32 => {
                    let mut b =
                        ListBuilder::new(Float32Builder::new()).with_field(Arc::clone(item));
                    for _ in 0..rows {
                        b.append_option(vector(&mut rng).map(|xs| xs.into_iter().map(Some)));
                    }
                    Arc::new(b.finish())
                }
                DataType::Boolean => {
                    let mut b =
                        ListBuilder::new(BooleanBuilder::new()).with_field(Arc::clone(item));
                    for _ in 0..rows {
                        b.append_option(list(&mut rng, |r: &mut StdRng| Some(r.random_bool(0.5))));
                    }
                    Arc::new(b.finish())
                }
                other => panic!("no generator for lists of {other}"),
            },
            other => panic!("no generator for {other}"),
        };
        columns.push(column);
    }
    RecordBatch::try_new(Arc::clone(scope.schema()), columns).unwrap()
}

#[test]
fn rows_walked_one_at_a_time_give_what_datafusion_gives() {
    let scope = scope();
    for seed in 0..4 {
        let rows = RowBatch::new(batch(&scope, 2_000, seed));
        for &(text, output, walked) in EXPRESSIONS {
            let e = Expression::compile(text, &scope, output)
                .unwrap_or_else(|err| panic!("{text}: {err}"));
            assert_eq!(
                e.has_row_plan(),
                walked,
                "{text}: walked a row at a time: {}",
                e.has_row_plan()
            );
            let by_datafusion = e.evaluate_rows(rows.batch().unwrap());
            let by_row = e
                .evaluate_walked(&rows)
                .unwrap_or_else(|| e.evaluate_rows(rows.batch().unwrap()));
            assert_eq!(by_datafusion.len(), by_row.len());
            for (row, (d, r)) in by_datafusion.iter().zip(&by_row).enumerate() {
                let same = match (d, r) {
                    // Floats compared by their text: NaN is NaN, -0 is not 0.
                    (Ok(d), Ok(r)) => format!("{d:?}") == format!("{r:?}"),
                    (Err(_), Err(_)) => true,
                    _ => false,
                };
                assert!(
                    same,
                    "{text}, seed {seed}, row {row}: DataFusion gives {d:?}, the row plan {r:?}"
                );
            }
        }
    }
}

#[test]
fn one_row_batches_agree_too() {
    let scope = scope();
    let full = batch(&scope, 300, 9);
    for row in 0..full.num_rows() {
        let rows = RowBatch::new(full.slice(row, 1));
        for &(text, output, _) in EXPRESSIONS {
            let e = Expression::compile(text, &scope, output).unwrap();
            let d = e.evaluate_rows(rows.batch().unwrap());
            let r = e.evaluate_in(&rows);
            assert_eq!(e.has_row_plan(), e.evaluate_walked(&rows).is_some());
            assert_eq!(
                format!(
                    "{:?}",
                    d.iter().map(|o| o.as_ref().ok()).collect::<Vec<_>>()
                ),
                format!(
                    "{:?}",
                    r.iter().map(|o| o.as_ref().ok()).collect::<Vec<_>>()
                ),
                "{text}, row {row}"
            );
        }
    }
}

/// A cell as the value of type `t` a store would hold: lists keep their null elements.
fn value_as(cell: Cell<'_>, t: ValueType) -> Value {
    match (cell, t) {
        (Cell::List(items), ValueType::Vector(_)) => Value::Vector(
            items
                .iter()
                .map(|c| match c {
                    Cell::Float(f) => f as f32,
                    other => panic!("a vector holding {}", other.describe()),
                })
                .collect(),
        ),
        (cell, _) => value_of(cell),
    }
}

/// A cell as the value a store would hold: lists keep their null elements.
fn value_of(cell: Cell<'_>) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Bool(b) => Value::Bool(b),
        Cell::Int(i) => Value::Int64(i),
        Cell::Float(f) => Value::Float64(f),
        Cell::Text(s) => Value::String(s.to_owned()),
        Cell::Time(ms) => Value::Timestamp(ms),
        Cell::List(items) => Value::List(items.iter().map(value_of).collect()),
        other => panic!("no value for {}", other.describe()),
    }
}

#[test]
fn rows_walked_over_cells_of_values_give_what_arrow_columns_give() {
    let scope = scope();
    let now_ms = 1_700_000_000_000;
    for (seed, rows) in [(20, 64), (21, 64), (22, 1), (23, 7)] {
        let batch = batch(&scope, rows, seed);
        // The same values as a store holds them, one vector per input in scope order.
        let values: Vec<Vec<Value>> = scope
            .inputs()
            .iter()
            .map(|input| {
                let at = scope.schema().index_of(&input.name).unwrap();
                let column = Column::new(batch.column(at));
                (0..rows)
                    .map(|row| value_as(column.cell(row), input.value_type))
                    .collect()
            })
            .collect();
        let columns = scope
            .inputs()
            .iter()
            .zip(&values)
            .map(|(input, values)| CellColumn::of_values(input.value_type, values.iter()))
            .collect();
        let cells = scope.cells(columns, rows, now_ms).unwrap();
        let arrow = RowBatch::new(batch);
        for &(text, output, walked) in EXPRESSIONS {
            if !walked {
                continue;
            }
            let e = Expression::compile(text, &scope, output).unwrap();
            assert!(e.walks(rows), "{text}");
            let by_arrow = e.evaluate_walked(&arrow).unwrap();
            let by_cells = e.evaluate_cells(&cells).unwrap();
            assert_eq!(
                format!("{by_arrow:?}"),
                format!("{by_cells:?}"),
                "{text}, seed {seed}"
            );
        }
    }
}

#[test]
fn cells_of_the_wrong_length_or_type_are_refused_by_name() {
    let scope = scope();
    let columns: Vec<CellColumn<'_>> = scope
        .inputs()
        .iter()
        .map(|input| CellColumn::with_capacity(input.value_type, 0, 0))
        .collect();
    let e = scope.cells(columns, 2, 0).unwrap_err().to_string();
    assert!(e.contains("`i`") && e.contains("0 cells for 2 rows"), "{e}");
    let mut columns: Vec<CellColumn<'_>> = scope
        .inputs()
        .iter()
        .map(|input| CellColumn::with_capacity(input.value_type, 0, 0))
        .collect();
    columns[0] = CellColumn::with_capacity(TEXT, 0, 0);
    let e = scope.cells(columns, 0, 0).unwrap_err().to_string();
    assert!(e.contains("cells of type string for type int64"), "{e}");

    // An Arrow column shorter than the rows, or of another type, is refused too: reading past
    // it would panic.
    let ints: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![1, 2]));
    let texts: ArrayRef = Arc::new(arrow_array::StringArray::from(vec!["a", "b", "c"]));
    for (column, rows, wanted) in [
        (&ints, 3, "2 cells for 3 rows"),
        (&texts, 3, "an Arrow column of type Utf8 for type int64"),
    ] {
        let mut columns: Vec<CellColumn<'_>> = scope
            .inputs()
            .iter()
            .map(|input| {
                let mut c = CellColumn::with_capacity(input.value_type, rows, 0);
                (0..rows).for_each(|_| c.push_cell(Cell::Null));
                c
            })
            .collect();
        columns[0] = CellColumn::arrow(column);
        let e = scope.cells(columns, rows, 0).unwrap_err().to_string();
        assert!(e.contains("`i`") && e.contains(wanted), "{e}");
    }
}
