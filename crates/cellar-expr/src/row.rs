//! Expressions evaluated a row at a time, for requests of a few rows.
//!
//! A request for a handful of entities spends far more in DataFusion's per-call machinery
//! (arrays allocated for every node, argument fields built per call, kernels dispatched by
//! type) than in its arithmetic. A [`RowPlan`] walks the same compiled physical expression over
//! one row's cells instead, for the nodes whose semantics it reproduces exactly, Arrow's and
//! DataFusion's both: wrapping integer arithmetic and checked division, floats compared in
//! total order, three-valued logic, `CASE` evaluated only where taken, the list functions'
//! null and index rules; and Cellar's own `haversine_km` and `cosine_similarity` (of lists and
//! vectors), computed by the same code as the functions. An expression with any other node has
//! no plan and is evaluated by DataFusion; `tests/row_parity.rs` checks that the two agree over
//! random inputs.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow_schema::{DataType, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column as ColumnExpr, IsNotNullExpr, IsNullExpr, Literal,
    NegativeExpr, NotExpr,
};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use crate::column::{Cell, Column};

/// The types a plan computes with, each held in one [`Cell`] variant.
#[derive(Debug, Clone, PartialEq)]
enum Type {
    Null,
    Bool,
    Int,
    UInt,
    Float,
    Text,
    /// Milliseconds, with or without a zone: the plan never reads the zone.
    Time(Option<Arc<str>>),
    List(Box<Type>),
    /// The elements of a vector, read as `Float` cells (widened exactly). Only counting a
    /// vector and `cosine_similarity` read them; every other node refuses the type.
    Float32,
}

impl Type {
    fn of(t: &DataType) -> Option<Type> {
        Some(match t {
            DataType::Null => Type::Null,
            DataType::Boolean => Type::Bool,
            DataType::Int64 => Type::Int,
            DataType::UInt64 => Type::UInt,
            DataType::Float64 => Type::Float,
            DataType::Utf8 => Type::Text,
            DataType::Timestamp(TimeUnit::Millisecond, zone) => Type::Time(zone.clone()),
            DataType::List(f) if *f.data_type() == DataType::Float32 => {
                Type::List(Box::new(Type::Float32))
            }
            DataType::List(f) => match Type::of(f.data_type())? {
                Type::List(_) | Type::Null => return None,
                inner => Type::List(Box::new(inner)),
            },
            _ => return None,
        })
    }

    fn is_scalar(&self) -> bool {
        !matches!(self, Type::List(_) | Type::Null | Type::Float32)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Compare {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Debug, Clone, PartialEq)]
enum Constant {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    Time(i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cast {
    /// To the same type, or from a null.
    Same,
    IntToFloat,
    UIntToFloat,
    UIntToInt,
    IntToUInt,
}

#[derive(Debug)]
enum Node {
    /// A column of the batch.
    Input(usize),
    Literal(Constant),
    Arith(Arith, Box<Node>, Box<Node>),
    Compare(Compare, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    IsNull(Box<Node>),
    IsNotNull(Box<Node>),
    Negate(Box<Node>),
    Cast(Cast, Box<Node>),
    Case {
        operand: Option<Box<Node>>,
        branches: Vec<(Node, Node)>,
        otherwise: Option<Box<Node>>,
    },
    Cardinality(Box<Node>),
    ArrayHas(Box<Node>, Box<Node>),
    ArrayElement(Box<Node>, Box<Node>),
    /// Seconds since the epoch of a millisecond timestamp, truncated as Arrow's cast does.
    ToUnixtime(Box<Node>),
    /// Cellar's `haversine_km` of four floats.
    Haversine(Box<[Node; 4]>),
    /// Cellar's `cosine_similarity` of two numeric lists, their elements read as floats as
    /// the function's coercion casts them.
    Cosine(Box<Node>, Box<Node>),
}

/// Where a walked plan reads its inputs: the columns of a batch, in schema order.
pub trait Inputs {
    /// Row `row` of column `column`; `None` when there is no such column.
    fn cell(&self, column: usize, row: usize) -> Option<Cell<'_>>;
}

impl Inputs for [Column] {
    fn cell(&self, column: usize, row: usize) -> Option<Cell<'_>> {
        self.get(column).map(|c| c.cell(row))
    }
}

/// A physical expression walked a row at a time (see the module's documentation).
#[derive(Debug)]
pub struct RowPlan {
    root: Node,
}

impl RowPlan {
    /// The plan of `expr` over batches of `schema`, or `None` when a node of it is one the
    /// plan does not reproduce.
    pub fn new(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<RowPlan> {
        Some(RowPlan {
            root: node(expr, schema)?.0,
        })
    }

    /// The expression's cell in `row` of `columns` (the batch's columns, in schema order).
    pub fn evaluate<'a, I: Inputs + ?Sized>(
        &'a self,
        columns: &'a I,
        row: usize,
    ) -> Result<Cell<'a>, String> {
        eval(&self.root, columns, row)
    }
}

fn node(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<(Node, Type)> {
    let any: &dyn PhysicalExpr = expr.as_ref();
    let t = Type::of(&expr.data_type(schema).ok()?)?;
    let boxed = |e: &Arc<dyn PhysicalExpr>| node(e, schema).map(|(n, t)| (Box::new(n), t));
    if let Some(c) = any.downcast_ref::<ColumnExpr>() {
        return Some((Node::Input(c.index()), t));
    }
    if let Some(l) = any.downcast_ref::<Literal>() {
        let value = match l.value().clone() {
            v if v.is_null() => Constant::Null,
            ScalarValue::Boolean(Some(b)) => Constant::Bool(b),
            ScalarValue::Int64(Some(i)) => Constant::Int(i),
            ScalarValue::UInt64(Some(u)) => Constant::UInt(u),
            ScalarValue::Float64(Some(f)) => Constant::Float(f),
            ScalarValue::Utf8(Some(s)) => Constant::Text(s),
            ScalarValue::TimestampMillisecond(Some(ms), _) => Constant::Time(ms),
            _ => return None,
        };
        if matches!(t, Type::List(_)) {
            return None;
        }
        return Some((Node::Literal(value), t));
    }
    if let Some(b) = any.downcast_ref::<BinaryExpr>() {
        let (left, lt) = boxed(b.left())?;
        let (right, rt) = boxed(b.right())?;
        let node = match b.op() {
            Operator::And | Operator::Or => {
                if !(lt == Type::Bool && rt == Type::Bool && t == Type::Bool) {
                    return None;
                }
                if *b.op() == Operator::And {
                    Node::And(left, right)
                } else {
                    Node::Or(left, right)
                }
            }
            op => {
                // Coercion leaves both sides of the same type; anything else (time minus time,
                // intervals, decimals) is DataFusion's.
                if lt != rt || !lt.is_scalar() {
                    return None;
                }
                if let Some(c) = compare(op) {
                    if t != Type::Bool {
                        return None;
                    }
                    Node::Compare(c, left, right)
                } else {
                    let a = arith(op)?;
                    if t != lt || !matches!(t, Type::Int | Type::UInt | Type::Float) {
                        return None;
                    }
                    Node::Arith(a, left, right)
                }
            }
        };
        return Some((node, t));
    }
    if let Some(n) = any.downcast_ref::<NotExpr>() {
        let (arg, at) = boxed(n.arg())?;
        return (at == Type::Bool).then_some((Node::Not(arg), t));
    }
    if let Some(n) = any.downcast_ref::<IsNullExpr>() {
        return Some((Node::IsNull(boxed(n.arg())?.0), t));
    }
    if let Some(n) = any.downcast_ref::<IsNotNullExpr>() {
        return Some((Node::IsNotNull(boxed(n.arg())?.0), t));
    }
    if let Some(n) = any.downcast_ref::<NegativeExpr>() {
        let (arg, at) = boxed(n.arg())?;
        return (at == t && matches!(t, Type::Int | Type::Float)).then_some((Node::Negate(arg), t));
    }
    if let Some(c) = any.downcast_ref::<CastExpr>() {
        if c.cast_options().safe {
            return None;
        }
        let (arg, from) = boxed(c.expr())?;
        let cast = match (&from, &t) {
            (Type::Null, _) => Cast::Same,
            (a, b) if a == b => Cast::Same,
            (Type::Int, Type::Float) => Cast::IntToFloat,
            (Type::UInt, Type::Float) => Cast::UIntToFloat,
            (Type::UInt, Type::Int) => Cast::UIntToInt,
            (Type::Int, Type::UInt) => Cast::IntToUInt,
            _ => return None,
        };
        return Some((Node::Cast(cast, arg), t));
    }
    if let Some(c) = any.downcast_ref::<CaseExpr>() {
        let operand = match c.expr() {
            Some(e) => {
                let (n, ot) = boxed(e)?;
                if !ot.is_scalar() {
                    return None;
                }
                Some((n, ot))
            }
            None => None,
        };
        let mut branches = Vec::with_capacity(c.when_then_expr().len());
        for (when, then) in c.when_then_expr() {
            let (w, wt) = node(when, schema)?;
            let (v, vt) = node(then, schema)?;
            let when_fits = match &operand {
                Some((_, ot)) => wt == *ot,
                None => wt == Type::Bool,
            };
            if !when_fits || (vt != t && vt != Type::Null) {
                return None;
            }
            branches.push((w, v));
        }
        let otherwise = match c.else_expr() {
            Some(e) => {
                let (n, et) = boxed(e)?;
                if et != t && et != Type::Null {
                    return None;
                }
                Some(n)
            }
            None => None,
        };
        return Some((
            Node::Case {
                operand: operand.map(|(n, _)| n),
                branches,
                otherwise,
            },
            t,
        ));
    }
    if let Some(f) = any.downcast_ref::<ScalarFunctionExpr>() {
        let args = f.args();
        let node = match (f.fun().name(), args) {
            ("cardinality", [list]) => {
                let (list, lt) = boxed(list)?;
                (matches!(lt, Type::List(_)) && t == Type::UInt)
                    .then_some(Node::Cardinality(list))?
            }
            ("array_has", [list, needle]) => {
                let (list, lt) = boxed(list)?;
                let (needle, nt) = boxed(needle)?;
                (lt == Type::List(Box::new(nt)) && t == Type::Bool)
                    .then_some(Node::ArrayHas(list, needle))?
            }
            ("array_element", [list, index]) => {
                let (list, lt) = boxed(list)?;
                let (index, it) = boxed(index)?;
                (lt == Type::List(Box::new(t.clone())) && it == Type::Int && t != Type::Float32)
                    .then_some(Node::ArrayElement(list, index))?
            }
            ("haversine_km", [lat1, lon1, lat2, lon2]) => {
                let mut points = Vec::with_capacity(4);
                for arg in [lat1, lon1, lat2, lon2] {
                    let (point, pt) = node(arg, schema)?;
                    if pt != Type::Float {
                        return None;
                    }
                    points.push(point);
                }
                let points: [Node; 4] = points.try_into().ok()?;
                (t == Type::Float).then(|| Node::Haversine(Box::new(points)))?
            }
            ("cosine_similarity", [a, b]) => {
                let (a, b) = (numeric_list(a, schema)?, numeric_list(b, schema)?);
                (t == Type::Float).then_some(Node::Cosine(a, b))?
            }
            ("to_unixtime", [time]) => {
                let (time, tt) = boxed(time)?;
                (matches!(tt, Type::Time(_)) && t == Type::Int).then_some(Node::ToUnixtime(time))?
            }
            _ => return None,
        };
        return Some((node, t));
    }
    None
}

/// An argument of `cosine_similarity`: a numeric list (or null), under the cast to a list of
/// floats its coercion adds, which the walk does element by element instead.
fn numeric_list(arg: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<Box<Node>> {
    let any: &dyn PhysicalExpr = arg.as_ref();
    let arg = match any.downcast_ref::<CastExpr>() {
        Some(c) if !c.cast_options().safe => c.expr(),
        _ => arg,
    };
    let (n, t) = node(arg, schema)?;
    match t {
        Type::Null => Some(Box::new(n)),
        Type::List(e) if matches!(*e, Type::Int | Type::UInt | Type::Float | Type::Float32) => {
            Some(Box::new(n))
        }
        _ => None,
    }
}

fn compare(op: &Operator) -> Option<Compare> {
    Some(match op {
        Operator::Eq => Compare::Eq,
        Operator::NotEq => Compare::NotEq,
        Operator::Lt => Compare::Lt,
        Operator::LtEq => Compare::LtEq,
        Operator::Gt => Compare::Gt,
        Operator::GtEq => Compare::GtEq,
        _ => return None,
    })
}

fn arith(op: &Operator) -> Option<Arith> {
    Some(match op {
        Operator::Plus => Arith::Add,
        Operator::Minus => Arith::Sub,
        Operator::Multiply => Arith::Mul,
        Operator::Divide => Arith::Div,
        Operator::Modulo => Arith::Rem,
        _ => return None,
    })
}

const DIVIDE_BY_ZERO: &str = "Divide by zero error";

fn overflow(l: impl std::fmt::Display, op: &str, r: impl std::fmt::Display) -> String {
    format!("Arithmetic overflow: Overflow happened on: {l} {op} {r}")
}

fn eval<'a, I: Inputs + ?Sized>(
    node: &'a Node,
    columns: &'a I,
    row: usize,
) -> Result<Cell<'a>, String> {
    Ok(match node {
        Node::Input(i) => match columns.cell(*i, row) {
            Some(c) => c,
            None => return Err(format!("no input column {i}")),
        },
        Node::Literal(l) => match l {
            Constant::Null => Cell::Null,
            Constant::Bool(b) => Cell::Bool(*b),
            Constant::Int(i) => Cell::Int(*i),
            Constant::UInt(u) => Cell::UInt(*u),
            Constant::Float(f) => Cell::Float(*f),
            Constant::Text(s) => Cell::Text(s),
            Constant::Time(ms) => Cell::Time(*ms),
        },
        Node::Arith(op, l, r) => {
            let l = eval(l, columns, row)?;
            let r = eval(r, columns, row)?;
            match (l, r) {
                (Cell::Null, _) | (_, Cell::Null) => Cell::Null,
                (Cell::Int(a), Cell::Int(b)) => Cell::Int(match op {
                    Arith::Add => a.wrapping_add(b),
                    Arith::Sub => a.wrapping_sub(b),
                    Arith::Mul => a.wrapping_mul(b),
                    Arith::Div if b == 0 => return Err(DIVIDE_BY_ZERO.into()),
                    Arith::Div => a.checked_div(b).ok_or_else(|| overflow(a, "/", b))?,
                    // Arrow's remainder wraps: `i64::MIN % -1` is 0.
                    Arith::Rem if b == 0 => return Err(DIVIDE_BY_ZERO.into()),
                    Arith::Rem => a.wrapping_rem(b),
                }),
                (Cell::UInt(a), Cell::UInt(b)) => Cell::UInt(match op {
                    Arith::Add => a.wrapping_add(b),
                    Arith::Sub => a.wrapping_sub(b),
                    Arith::Mul => a.wrapping_mul(b),
                    Arith::Div => a.checked_div(b).ok_or(DIVIDE_BY_ZERO)?,
                    Arith::Rem => a.checked_rem(b).ok_or(DIVIDE_BY_ZERO)?,
                }),
                (Cell::Float(a), Cell::Float(b)) => Cell::Float(match op {
                    Arith::Add => a + b,
                    Arith::Sub => a - b,
                    Arith::Mul => a * b,
                    Arith::Div => a / b,
                    Arith::Rem => a % b,
                }),
                (l, r) => return Err(mismatch("arithmetic", l, r)),
            }
        }
        Node::Compare(op, l, r) => {
            let l = eval(l, columns, row)?;
            let r = eval(r, columns, row)?;
            match order(l, r)? {
                None => Cell::Null,
                Some(o) => Cell::Bool(match op {
                    Compare::Eq => o == Ordering::Equal,
                    Compare::NotEq => o != Ordering::Equal,
                    Compare::Lt => o == Ordering::Less,
                    Compare::LtEq => o != Ordering::Greater,
                    Compare::Gt => o == Ordering::Greater,
                    Compare::GtEq => o != Ordering::Less,
                }),
            }
        }
        Node::And(l, r) => match eval(l, columns, row)? {
            Cell::Bool(false) => Cell::Bool(false),
            Cell::Bool(true) => eval(r, columns, row)?,
            _ => match eval(r, columns, row)? {
                Cell::Bool(false) => Cell::Bool(false),
                _ => Cell::Null,
            },
        },
        Node::Or(l, r) => match eval(l, columns, row)? {
            Cell::Bool(true) => Cell::Bool(true),
            Cell::Bool(false) => eval(r, columns, row)?,
            _ => match eval(r, columns, row)? {
                Cell::Bool(true) => Cell::Bool(true),
                _ => Cell::Null,
            },
        },
        Node::Not(arg) => match eval(arg, columns, row)? {
            Cell::Bool(b) => Cell::Bool(!b),
            _ => Cell::Null,
        },
        Node::IsNull(arg) => Cell::Bool(matches!(eval(arg, columns, row)?, Cell::Null)),
        Node::IsNotNull(arg) => Cell::Bool(!matches!(eval(arg, columns, row)?, Cell::Null)),
        Node::Negate(arg) => match eval(arg, columns, row)? {
            Cell::Int(i) => Cell::Int(i.wrapping_neg()),
            Cell::Float(f) => Cell::Float(-f),
            _ => Cell::Null,
        },
        Node::Cast(cast, arg) => match (cast, eval(arg, columns, row)?) {
            (_, Cell::Null) => Cell::Null,
            (Cast::Same, c) => c,
            (Cast::IntToFloat, Cell::Int(i)) => Cell::Float(i as f64),
            (Cast::UIntToFloat, Cell::UInt(u)) => Cell::Float(u as f64),
            (Cast::UIntToInt, Cell::UInt(u)) => Cell::Int(
                i64::try_from(u).map_err(|_| format!("Can't cast value {u} to type Int64"))?,
            ),
            (Cast::IntToUInt, Cell::Int(i)) => Cell::UInt(
                u64::try_from(i).map_err(|_| format!("Can't cast value {i} to type UInt64"))?,
            ),
            (_, c) => return Err(format!("cannot cast {}", c.describe())),
        },
        Node::Case {
            operand,
            branches,
            otherwise,
        } => {
            let operand = match operand {
                Some(o) => Some(eval(o, columns, row)?),
                None => None,
            };
            for (when, then) in branches {
                let taken = match operand {
                    // `CASE x WHEN v`: x = v by Arrow's equality (negative zero is not
                    // zero), which no null matches.
                    Some(x) => total_order(x, eval(when, columns, row)?)? == Some(Ordering::Equal),
                    None => matches!(eval(when, columns, row)?, Cell::Bool(true)),
                };
                if taken {
                    return eval(then, columns, row);
                }
            }
            match otherwise {
                Some(e) => eval(e, columns, row)?,
                None => Cell::Null,
            }
        }
        Node::Cardinality(list) => match eval(list, columns, row)? {
            Cell::List(items) => Cell::UInt(items.len() as u64),
            _ => Cell::Null,
        },
        Node::ArrayHas(list, needle) => {
            let list = eval(list, columns, row)?;
            let needle = eval(needle, columns, row)?;
            match (list, needle) {
                (Cell::Null, _) | (_, Cell::Null) => Cell::Null,
                (Cell::List(items), needle) => {
                    let mut found = false;
                    for item in items.iter() {
                        // Arrow's equality, in which negative zero is not zero.
                        if !matches!(item, Cell::Null)
                            && total_order(item, needle)? == Some(Ordering::Equal)
                        {
                            found = true;
                            break;
                        }
                    }
                    Cell::Bool(found)
                }
                (l, _) => return Err(format!("array_has of {}", l.describe())),
            }
        }
        Node::ArrayElement(list, index) => {
            let list = eval(list, columns, row)?;
            let index = eval(index, columns, row)?;
            match (list, index) {
                (Cell::Null, _) | (_, Cell::Null) => Cell::Null,
                (Cell::List(items), Cell::Int(index)) => {
                    // Lists have 32-bit offsets: an index past them is an error, as in Arrow.
                    let index = i32::try_from(index)
                        .map_err(|_| format!("array_element got invalid index: {index}"))?
                        as i64;
                    let len = items.len() as i64;
                    let at = if index < 0 { index + len } else { index - 1 };
                    if (0..len).contains(&at) {
                        items.get(at as usize)
                    } else {
                        Cell::Null
                    }
                }
                (l, i) => return Err(mismatch("array_element", l, i)),
            }
        }
        Node::ToUnixtime(time) => match eval(time, columns, row)? {
            Cell::Time(ms) => Cell::Int(ms / 1000),
            _ => Cell::Null,
        },
        Node::Haversine(points) => {
            // Every argument first, as DataFusion computes them all before the function.
            let mut at = [None; 4];
            for (slot, point) in at.iter_mut().zip(points.iter()) {
                *slot = match eval(point, columns, row)? {
                    Cell::Float(x) => Some(x),
                    Cell::Null => None,
                    other => return Err(format!("haversine_km of {}", other.describe())),
                };
            }
            match at {
                [Some(lat1), Some(lon1), Some(lat2), Some(lon2)] => {
                    Cell::Float(crate::functions::haversine_km(lat1, lon1, lat2, lon2))
                }
                _ => Cell::Null,
            }
        }
        Node::Cosine(a, b) => {
            let (a, b) = (eval(a, columns, row)?, eval(b, columns, row)?);
            match (a, b) {
                (Cell::Null, _) | (_, Cell::Null) => Cell::Null,
                (Cell::List(x), Cell::List(y)) => {
                    if x.len() != y.len() {
                        return Err(format!(
                            "cosine_similarity of lists of different lengths ({} and {})",
                            x.len(),
                            y.len()
                        ));
                    }
                    let float = |c: Cell<'_>| match c {
                        Cell::Float(f) => Some(f),
                        Cell::Int(i) => Some(i as f64),
                        Cell::UInt(u) => Some(u as f64),
                        _ => None,
                    };
                    // A null element (or one that is not a number) makes the whole null.
                    if x.iter().chain(y.iter()).any(|c| float(c).is_none()) {
                        Cell::Null
                    } else {
                        let (xs, ys) = (x.iter().filter_map(float), y.iter().filter_map(float));
                        match crate::functions::cosine(xs, ys) {
                            Some(c) => Cell::Float(c),
                            None => Cell::Null,
                        }
                    }
                }
                (l, r) => return Err(mismatch("cosine_similarity", l, r)),
            }
        }
    })
}

/// How two cells of the same type order, as DataFusion's comparisons order them: floats in
/// IEEE total order (NaN equal to itself and above every number) once negative zero is made
/// zero; `None` when either is null.
fn order(l: Cell<'_>, r: Cell<'_>) -> Result<Option<Ordering>, String> {
    Ok(Some(match (l, r) {
        (Cell::Float(a), Cell::Float(b)) => (a + 0.0).total_cmp(&(b + 0.0)),
        (l, r) => return total_order(l, r),
    }))
}

/// [`order`] as Arrow's kernels alone order cells: negative zero below zero.
fn total_order(l: Cell<'_>, r: Cell<'_>) -> Result<Option<Ordering>, String> {
    Ok(Some(match (l, r) {
        (Cell::Null, _) | (_, Cell::Null) => return Ok(None),
        (Cell::Bool(a), Cell::Bool(b)) => a.cmp(&b),
        (Cell::Int(a), Cell::Int(b)) | (Cell::Time(a), Cell::Time(b)) => a.cmp(&b),
        (Cell::UInt(a), Cell::UInt(b)) => a.cmp(&b),
        (Cell::Float(a), Cell::Float(b)) => a.total_cmp(&b),
        (Cell::Text(a), Cell::Text(b)) => a.cmp(b),
        (l, r) => return Err(mismatch("comparing", l, r)),
    }))
}

fn mismatch(what: &str, l: Cell<'_>, r: Cell<'_>) -> String {
    format!("{what} {} and {}", l.describe(), r.describe())
}
