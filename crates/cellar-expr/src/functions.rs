//! Functions ranking models need that DataFusion does not have: `haversine_km` and
//! `cosine_similarity`. (`dot_product`, `array_has`, `cardinality` and the string, math and
//! time functions are DataFusion's own.)

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef, Float64Array};
use arrow_schema::{DataType, Field};
use datafusion::common::{exec_err, plan_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Every function of the language that DataFusion does not ship.
pub fn all() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(Haversine::default()),
        ScalarUDF::from(CosineSimilarity::default()),
    ]
}

const EARTH_RADIUS_KM: f64 = 6371.0088;

/// The great-circle distance in kilometres between two points given in degrees: what
/// `haversine_km` computes, here and walked a row at a time.
pub(crate) fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let [lat1, lon1, lat2, lon2] = [lat1, lon1, lat2, lon2].map(f64::to_radians);
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The cosine similarity of two sequences of numbers of the same length, `None` when either
/// is all zeros: what `cosine_similarity` computes, here and walked a row at a time, summing
/// in the same order.
pub(crate) fn cosine(x: impl Iterator<Item = f64>, y: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut dot, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for (p, q) in x.zip(y) {
        dot += p * q;
        xx += p * p;
        yy += q * q;
    }
    (xx > 0.0 && yy > 0.0).then(|| dot / (xx.sqrt() * yy.sqrt()))
}

/// `haversine_km(lat1, lon1, lat2, lon2)`: the great-circle distance in kilometres between
/// two points given in degrees.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Haversine {
    signature: Signature,
}

impl Default for Haversine {
    fn default() -> Haversine {
        Haversine {
            signature: Signature::uniform(4, vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Haversine {
    fn name(&self) -> &str {
        "haversine_km"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [lat1, lon1, lat2, lon2] =
            [0, 1, 2, 3].map(|i| arrays[i].as_primitive::<Float64Type>());
        let distance: Float64Array = (0..args.number_rows)
            .map(|row| {
                let points = [lat1, lon1, lat2, lon2];
                if points.iter().any(|a| a.is_null(row)) {
                    return None;
                }
                let [lat1, lon1, lat2, lon2] = points.map(|a| a.value(row));
                Some(haversine_km(lat1, lon1, lat2, lon2))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(distance)))
    }
}

/// `cosine_similarity(a, b)`: of two lists (or vectors) of numbers of the same length; null if
/// either is null or all zeros.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CosineSimilarity {
    signature: Signature,
}

impl Default for CosineSimilarity {
    fn default() -> CosineSimilarity {
        CosineSimilarity {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn float_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

impl ScalarUDFImpl for CosineSimilarity {
    fn name(&self) -> &str {
        "cosine_similarity"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return plan_err!(
                "cosine_similarity takes 2 arguments, not {}",
                arg_types.len()
            );
        }
        for t in arg_types {
            match t {
                DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
                    if f.data_type().is_numeric() => {}
                DataType::Null => {}
                other => return plan_err!("cosine_similarity takes lists of numbers, not {other}"),
            }
        }
        Ok(vec![float_list(), float_list()])
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (a, b) = (list(&arrays[0])?, list(&arrays[1])?);
        let mut out = Vec::with_capacity(args.number_rows);
        for row in 0..args.number_rows {
            if a.is_null(row) || b.is_null(row) {
                out.push(None);
                continue;
            }
            let (x, y) = (a.value(row), b.value(row));
            let (x, y) = (
                x.as_primitive::<Float64Type>(),
                y.as_primitive::<Float64Type>(),
            );
            if x.len() != y.len() {
                return exec_err!(
                    "cosine_similarity of lists of different lengths ({} and {})",
                    x.len(),
                    y.len()
                );
            }
            if x.null_count() > 0 || y.null_count() > 0 {
                out.push(None);
                continue;
            }
            out.push(cosine(
                x.values().iter().copied(),
                y.values().iter().copied(),
            ));
        }
        Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
    }
}

fn list(array: &ArrayRef) -> Result<&arrow_array::ListArray> {
    match array.as_list_opt::<i32>() {
        Some(list) => Ok(list),
        None => exec_err!("expected a list, got {}", array.data_type()),
    }
}
