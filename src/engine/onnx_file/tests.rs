//! The walk against tract's own reading, and which tables stay in the file.

use super::message::varint;
use super::*;
use tract_onnx::tract_core::ops::konst::Const;

fn consts(model: InferenceModel) -> Vec<(String, Arc<Tensor>)> {
    let typed = model.into_typed().unwrap();
    let mut out: Vec<_> = typed
        .nodes
        .iter()
        .filter_map(|n| Some((n.name.clone(), n.op_as::<Const>()?.val().clone())))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn the_weights_read_in_place_equal_the_ones_tract_decodes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny");
    for tower in ["textual", "visual"] {
        let path = root.join(tower).join("model.onnx");
        let onnx = tract_onnx::onnx();
        let (skeleton, _) = skeleton(&path, "model.onnx", InPlace::Weights).unwrap();
        let file_len = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(
            skeleton.len() * 4 < file_len,
            "{tower}: the skeleton ({} bytes) still holds the weights ({file_len})",
            skeleton.len()
        );
        let (ours, tables) = model_for_path(&onnx, &path, InPlace::Weights).unwrap();
        assert!(tables.is_empty());
        let ours = consts(ours);
        let theirs = consts(onnx.model_for_path(&path).unwrap());
        assert_eq!(ours.len(), theirs.len());
        assert!(ours.len() > 10, "{tower}: {} constants", ours.len());
        for ((na, a), (nb, b)) in ours.iter().zip(&theirs) {
            assert_eq!(na, nb);
            assert_eq!(a, b, "{tower}: constant {na} differs");
        }
    }
}

#[test]
fn only_the_word_embedding_table_stays_in_the_file_and_its_stand_in_is_its_first_rows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny");
    let onnx = tract_onnx::onnx();
    let text = root.join("textual/model.onnx");
    let (model, tables) = model_for_path(&onnx, &text, InPlace::WeightsAndTables).unwrap();
    let [table] = tables.as_slice() else {
        panic!("expected one table in the file, got {tables:?}");
    };
    assert_eq!(
        table.name,
        "text.transformer.embeddings.word_embeddings.weight"
    );
    assert_eq!((table.rows, table.cols), (250_002, 8));
    let ours = consts(model);
    let theirs = consts(onnx.model_for_path(&text).unwrap());
    assert_eq!(ours.len(), theirs.len());
    for ((na, a), (nb, b)) in ours.iter().zip(&theirs) {
        assert_eq!(na, nb);
        if na.starts_with(&table.name) {
            assert_eq!(a.shape(), [2, 8]);
            assert_eq!(
                **a,
                b.slice(0, 0, 2).unwrap(),
                "the stand-in is not rows 0-1"
            );
        } else {
            assert_eq!(a, b, "constant {na} differs");
        }
    }
    // The position table (514 x 8) is gathered too, but small: it stays in memory.
    let visual = root.join("visual/model.onnx");
    let (_, tables) = model_for_path(&onnx, &visual, InPlace::WeightsAndTables).unwrap();
    assert!(tables.is_empty(), "{tables:?}");
}

/// An ONNX file whose output gathers rows of a `rows` x 16 table by the ids of its input;
/// `also` adds a node of that op type that reads the table too (its output unused).
fn gather_model(dir: &Path, rows: usize, also: Option<&str>) -> std::path::PathBuf {
    use prost::Message;
    use tract_onnx::pb::*;
    let value = |name: &str, elem_type: i32, dims: &[&str]| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: Some(match d.parse::<i64>() {
                                Ok(n) => tensor_shape_proto::dimension::Value::DimValue(n),
                                Err(_) => {
                                    tensor_shape_proto::dimension::Value::DimParam((*d).into())
                                }
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|i| (*i).into()).collect(),
        output: vec![output.into()],
        name: output.into(),
        ..Default::default()
    };
    let values: Vec<f32> = (0..rows * 16).map(|i| i as f32 * 0.5 - 3.0).collect();
    let mut nodes = vec![node("Gather", &["table", "ids"], "rows")];
    if let Some(op) = also {
        nodes.push(node(op, &["table"], "other"));
    }
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: vec![TensorProto {
                name: "table".into(),
                dims: vec![rows as i64, 16],
                data_type: tensor_proto::DataType::Float as i32,
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            }],
            input: vec![value("ids", tensor_proto::DataType::Int64 as i32, &["N"])],
            output: vec![value(
                "rows",
                tensor_proto::DataType::Float as i32,
                &["N", "16"],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join(format!("gather-{rows}-{}.onnx", also.unwrap_or("only")));
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

#[test]
fn a_table_stays_in_the_file_only_when_large_and_only_gathered_from() {
    let dir = std::env::temp_dir().join(format!("clipserve-tables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = tract_onnx::onnx();
    let large = 70_000; // 70,000 x 16 f32: 4.3 MB
    let in_file = |path: &Path| {
        model_for_path(&onnx, path, InPlace::WeightsAndTables)
            .unwrap()
            .1
            .into_iter()
            .map(|t| (t.name, t.rows, t.cols))
            .collect::<Vec<_>>()
    };
    let only = gather_model(&dir, large, None);
    assert_eq!(in_file(&only), [("table".to_string(), large, 16)]);
    // Read by anything else, or too small to matter: loaded as usual.
    assert!(in_file(&gather_model(&dir, large, Some("Shape"))).is_empty());
    assert!(in_file(&gather_model(&dir, 1000, None)).is_empty());
    let (model, none) = model_for_path(&onnx, &only, InPlace::Weights).unwrap();
    assert!(none.is_empty());
    assert!(consts(model).iter().any(|(_, t)| t.shape() == [large, 16]));

    // The stand-in, swapped for the file's rows, gives the table's rows.
    let (model, tables) = model_for_path(&onnx, &only, InPlace::WeightsAndTables).unwrap();
    let mut typed = model.into_typed().unwrap().into_decluttered().unwrap();
    crate::engine::table::read_tables_in_place(&mut typed, tables).unwrap();
    let plan = typed.into_optimized().unwrap().into_runnable().unwrap();
    let ids = tensor1(&[69_999i64, 0, 12_345, -1]);
    let out = plan.run(tvec![ids.into()]).unwrap();
    let out = out[0].to_plain_array_view::<f32>().unwrap();
    for (i, row) in [69_999usize, 0, 12_345, 69_999].into_iter().enumerate() {
        for c in 0..16 {
            let want = (row * 16 + c) as f32 * 0.5 - 3.0;
            assert_eq!(out[[i, c]], want, "row {row} col {c}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_that_is_not_protobuf_gets_tracts_own_error() {
    let dir = std::env::temp_dir().join(format!("clipserve-onnx-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.onnx");
    std::fs::write(&path, b"\xff\xff\xff not an onnx file").unwrap();
    assert!(skeleton(&path, "model.onnx", InPlace::WeightsAndTables).is_err());
    assert!(model_for_path(&tract_onnx::onnx(), &path, InPlace::WeightsAndTables).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn varints_round_trip() {
    for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        assert_eq!(buf.last().map(|b| b & 0x80), Some(0));
        let mut rest = buf.as_slice();
        assert_eq!(varint(&mut rest).unwrap(), v);
        assert!(rest.is_empty());
        assert!(
            varint(&mut &buf[..buf.len() - 1]).is_err(),
            "a cut varint is an error"
        );
    }
}
