//! Inputs as cells borrowed straight from feature values, for expressions walked a row at a
//! time.
//!
//! A request of a few rows spends more building Arrow columns of its inputs (copying a time
//! series' strings into buffers, allocating offsets and validity for every list) than walking
//! the expressions over them. A walked expression only reads cells, so a [`CellColumn`] gives
//! it the cells the Arrow column would have held, borrowed from the values read: a value of the
//! input's type is its cell, anything else a null, as [`crate::arrow::column`] builds them.

use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use cellar_spec::{ScalarType, Value, ValueType};

use crate::arrow::data_type as data_type_of;
use crate::column::{Cell, Column, Items};
use crate::row::Inputs;

/// One input's cells, a slot per row.
#[derive(Debug)]
pub enum CellColumn<'a> {
    /// Cells read from an Arrow column of `rows` rows of type `data_type`.
    Arrow {
        column: Column,
        rows: usize,
        data_type: DataType,
    },
    /// Cells of values; a list's elements are kept in `items`, and its slot names their range.
    Cells {
        value_type: ValueType,
        rows: Vec<Slot<'a>>,
        items: Vec<Cell<'a>>,
    },
}

/// One row of a [`CellColumn::Cells`].
#[derive(Debug, Clone, Copy)]
pub enum Slot<'a> {
    Cell(Cell<'a>),
    /// Elements `start..end` of the column's items.
    List(usize, usize),
}

impl Default for CellColumn<'_> {
    fn default() -> Self {
        CellColumn::Cells {
            value_type: ValueType::Scalar(ScalarType::Bool),
            rows: Vec::new(),
            items: Vec::new(),
        }
    }
}

impl<'a> CellColumn<'a> {
    /// An empty column of values of type `t`, with room for `rows` rows and `items` list
    /// elements in all.
    pub fn with_capacity(t: ValueType, rows: usize, items: usize) -> CellColumn<'a> {
        CellColumn::Cells {
            value_type: t,
            rows: Vec::with_capacity(rows),
            items: Vec::with_capacity(items),
        }
    }

    /// The cells of an Arrow column.
    pub fn arrow(array: &ArrayRef) -> CellColumn<'a> {
        CellColumn::Arrow {
            column: Column::new(array),
            rows: array.len(),
            data_type: array.data_type().clone(),
        }
    }

    /// A column of type `t` holding `values`, one per row.
    pub fn of_values(t: ValueType, values: impl ExactSizeIterator<Item = &'a Value>) -> Self {
        let mut column = CellColumn::with_capacity(t, values.len(), 0);
        for value in values {
            column.push_value(value);
        }
        column
    }

    /// How many rows the column holds.
    fn rows(&self) -> usize {
        match self {
            CellColumn::Arrow { rows, .. } => *rows,
            CellColumn::Cells { rows, .. } => rows.len(),
        }
    }

    /// Adds a row holding `value`: its cell if it has the column's type, otherwise null.
    pub fn push_value(&mut self, value: &'a Value) {
        let CellColumn::Cells {
            value_type,
            rows,
            items,
        } = self
        else {
            return;
        };
        let slot = match (*value_type, value) {
            (ValueType::Scalar(s), v) => Slot::Cell(scalar(s, v)),
            (ValueType::List(s) | ValueType::Set(s), Value::List(xs) | Value::Set(xs)) => {
                let start = items.len();
                items.extend(xs.iter().map(|x| scalar(s, x)));
                Slot::List(start, items.len())
            }
            (ValueType::Vector(_), Value::Vector(xs)) => {
                let start = items.len();
                items.extend(xs.iter().map(|&x| Cell::Float(f64::from(x))));
                Slot::List(start, items.len())
            }
            _ => Slot::Cell(Cell::Null),
        };
        rows.push(slot);
    }

    /// Adds a row holding a list of `values` (a time series' values of one feature), each
    /// a cell of the column's element type or a null.
    pub fn push_list(&mut self, values: impl IntoIterator<Item = &'a Value>) {
        let CellColumn::Cells {
            value_type,
            rows,
            items,
        } = self
        else {
            return;
        };
        let start = items.len();
        match *value_type {
            ValueType::List(s) | ValueType::Set(s) => {
                items.extend(values.into_iter().map(|v| scalar(s, v)));
                rows.push(Slot::List(start, items.len()));
            }
            _ => rows.push(Slot::Cell(Cell::Null)),
        }
    }

    /// Adds a row holding a list of epoch milliseconds.
    pub fn push_times(&mut self, times: impl IntoIterator<Item = i64>) {
        if let CellColumn::Cells { rows, items, .. } = self {
            let start = items.len();
            items.extend(times.into_iter().map(Cell::Time));
            rows.push(Slot::List(start, items.len()));
        }
    }

    /// Adds a row holding `cell` (a scalar).
    pub fn push_cell(&mut self, cell: Cell<'a>) {
        if let CellColumn::Cells { rows, .. } = self {
            rows.push(Slot::Cell(cell));
        }
    }

    /// The column with row `index[i]` of this one as its row `i`: rows read once per distinct
    /// entity, repeated for every request row of that entity.
    pub fn expand(self, index: &[usize]) -> CellColumn<'a> {
        match self {
            CellColumn::Cells {
                value_type,
                rows,
                items,
            } => CellColumn::Cells {
                value_type,
                rows: index
                    .iter()
                    .map(|&i| rows.get(i).copied().unwrap_or(Slot::Cell(Cell::Null)))
                    .collect(),
                items,
            },
            arrow => arrow,
        }
    }

    pub fn cell(&self, row: usize) -> Cell<'_> {
        match self {
            // Rows past the array's are refused when the rows are made (`check`).
            CellColumn::Arrow { column, .. } => column.cell(row),
            CellColumn::Cells { rows, items, .. } => match rows.get(row) {
                Some(Slot::Cell(cell)) => *cell,
                Some(&Slot::List(start, end)) => Cell::List(Items::Cells(&items[start..end])),
                None => Cell::Null,
            },
        }
    }
}

/// The cell a value of scalar type `s` has: itself, or null when it is of another type.
fn scalar(s: ScalarType, value: &Value) -> Cell<'_> {
    match (s, value) {
        (ScalarType::Bool, Value::Bool(b)) => Cell::Bool(*b),
        (ScalarType::Int64, Value::Int64(i)) => Cell::Int(*i),
        (ScalarType::Float64, Value::Float64(f)) => Cell::Float(*f),
        (ScalarType::String, Value::String(t)) => Cell::Text(t),
        (ScalarType::Bytes, Value::Bytes(b)) => Cell::Bytes(b),
        (ScalarType::Timestamp, Value::Timestamp(ms)) => Cell::Time(*ms),
        _ => Cell::Null,
    }
}

/// The inputs of a few rows as cells, in the scope's schema order with `now()` among them:
/// what [`crate::Expression::evaluate_cells`] walks. Made by [`crate::Scope::cells`].
#[derive(Debug)]
pub struct CellRows<'a> {
    pub(crate) columns: Vec<CellColumn<'a>>,
    pub(crate) rows: usize,
}

impl CellRows<'_> {
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl Inputs for CellRows<'_> {
    fn cell(&self, column: usize, row: usize) -> Option<Cell<'_>> {
        self.columns.get(column).map(|c| c.cell(row))
    }
}

/// Checks `column` (of an input of type `t`) holds `rows` rows of that type: reading a row
/// past an Arrow column's would panic, and cells of another type would be read as that type.
pub(crate) fn check(column: &CellColumn<'_>, t: ValueType, rows: usize) -> Result<(), String> {
    let n = column.rows();
    if n != rows {
        return Err(format!("{n} cells for {rows} rows"));
    }
    match column {
        CellColumn::Cells { value_type, .. } if *value_type != t => {
            Err(format!("cells of type {value_type} for type {t}"))
        }
        CellColumn::Arrow { data_type, .. } if Some(data_type) != data_type_of(t).as_ref() => {
            Err(format!("an Arrow column of type {data_type} for type {t}"))
        }
        _ => Ok(()),
    }
}
