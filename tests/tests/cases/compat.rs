//! Coming from Keras or PyTorch and going back, checked against fixtures the frameworks wrote
//! (`tests/fixtures/keras/make.py`): Keras weights in and out, predictions equal to Keras', the
//! 40-step training trajectories of Keras' `fit` (`--compat keras`) and of PyTorch's `nn.LSTM` +
//! `Adam` (`--compat torch`), the same with 1, 2 and 3 workers, and the errors bad files get.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use carry_it::{TempDir, max_diff, params};
use data::npy::{Array, read_npy, read_npz, write_npy};
use model::params::ParamLayout;

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn fixture(name: &str) -> PathBuf {
    carry_it::workspace()
        .join("tests/fixtures/keras")
        .join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Largest difference between a model file and PyTorch-layout tensors from a fixture, per tensor.
fn diff_from(file: &Path, want: &BTreeMap<String, Array>) -> f32 {
    let m = model::export::load_any(file, None).expect("exported model");
    let layout = ParamLayout::new(&m.config);
    assert_eq!(layout.specs().len(), want.len(), "tensor count");
    layout
        .specs()
        .iter()
        .map(|spec| {
            let w = &want[&spec.name];
            assert_eq!(w.shape, spec.shape, "{}", spec.name);
            max_diff(&m.params[spec.range()], &w.data)
        })
        .fold(0.0, f32::max)
}

/// `train` from the seed's Keras weights on the fixture data: 40 steps of batch 10, dropout 0,
/// state carried across batches and reset at each epoch start, Adam lr 1e-3 eps 1e-7.
fn fit_args<'a>(out: &'a str, data: &'a str, init: &'a str, compat: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--init-from",
        init,
        "--compat",
        compat,
        "--batch-size",
        "10",
        "--epochs",
        "2",
        "--dropout",
        "0",
        "--lr",
        "0.001",
        "--epsilon",
        "1e-7",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--progress",
        "log",
        "--out",
        out,
    ]
}

#[test]
fn keras_and_pytorch_weights_in_and_out_and_both_trajectories() {
    let dir = TempDir::new("compat");
    let seed = fixture("seed.weights.h5");
    let data = fixture("data.npz");

    // Keras -> carry -> Keras is lossless, from either Keras file
    for (i, from) in [seed.clone(), fixture("seed.keras")].iter().enumerate() {
        let back = dir.join(&format!("back{i}.weights.h5"));
        carry_it::coordinator_ok(
            &dir,
            &format!("export-keras-{i}"),
            &["export", "--model", s(from), "--out", s(&back)],
        );
        let a = model::keras::load(&seed, None).unwrap();
        let b = model::keras::load(&back, None).unwrap();
        assert_eq!(a.config, b.config);
        assert_eq!(a.params, b.params, "Keras weights round-trip exactly");
    }

    // carry's predictions with the Keras weights equal Keras'
    let want = read_npy(&fixture("keras_pred.npy")).unwrap();
    for from in [seed.clone(), fixture("seed.keras")] {
        let out = dir.join("pred.npz");
        carry_it::coordinator_ok(
            &dir,
            "predict-keras",
            &[
                "predict",
                "--model",
                s(&from),
                "--inputs",
                s(&fixture("pred_x.npy")),
                "--out",
                s(&out),
            ],
        );
        let got = read_npz(&out).unwrap();
        assert_eq!(got["y"].shape, want.shape);
        let d = max_diff(&got["y"].data, &want.data);
        assert!(
            d <= 1e-5,
            "{}: predictions differ from Keras' by {d}",
            from.display()
        );
    }

    // 40 training steps follow each framework's trajectory, in process and with 1-3 workers
    for (compat, fixture_name) in [("keras", "keras_fit40.npz"), ("torch", "torch_fit40.npz")] {
        let want = read_npz(&fixture(fixture_name)).unwrap();
        let out = dir.join(&format!("fit-{compat}"));
        let mut args = fit_args(s(&out), s(&data), s(&seed), compat);
        args.extend_from_slice(&["--spawn-workers", "0"]);
        let p = carry_it::coordinator_ok(&dir, &format!("fit-{compat}"), &args);
        let log = p.log();
        assert!(log.contains("DONE steps=40"), "{log}");
        let exported = dir.join(&format!("fit-{compat}.safetensors"));
        carry_it::coordinator_ok(
            &dir,
            &format!("export-{compat}"),
            &[
                "export",
                "--model",
                s(&out),
                "--format",
                "torch",
                "--out",
                s(&exported),
            ],
        );
        let d = diff_from(&exported, &want);
        assert!(
            d <= 1e-5,
            "--compat {compat}: weights after 40 steps differ from {fixture_name} by {d}"
        );
        let reference = params(&out);
        let mut bias_hh = 0.0f32;
        let m = model::export::load_model(&exported, None).unwrap();
        for spec in ParamLayout::new(&m.config).specs() {
            if spec.name.contains("bias_hh") {
                bias_hh = m.params[spec.range()]
                    .iter()
                    .fold(bias_hh, |a, v| a.max(v.abs()));
            }
        }
        if compat == "keras" {
            assert_eq!(bias_hh, 0.0, "keras mode trains one bias per layer");
        } else {
            assert!(bias_hh > 0.0, "torch mode trains bias_hh too");
        }
        for k in ["1", "2", "3"] {
            let out = dir.join(&format!("fit-{compat}-{k}"));
            let mut args = fit_args(s(&out), s(&data), s(&seed), compat);
            args.extend_from_slice(&["--spawn-workers", k, "--listen", "127.0.0.1:0"]);
            let p = carry_it::coordinator_ok(&dir, &format!("fit-{compat}-{k}"), &args);
            let d = max_diff(&params(&out), &reference);
            p.check(
                d <= 1e-5,
                &format!("--compat {compat}, {k} workers: {d} from the in-process run"),
            );
        }
    }

    // a model trained here goes to Keras and back without loss
    let keras_out = dir.join("trained.weights.h5");
    carry_it::coordinator_ok(
        &dir,
        "export-trained",
        &[
            "export",
            "--model",
            s(&dir.join("fit-keras")),
            "--out",
            s(&keras_out),
        ],
    );
    let back = model::keras::load(&keras_out, None).unwrap();
    assert_eq!(back.params, params(&dir.join("fit-keras")));
}

#[test]
fn bad_files_and_mismatched_shapes_are_clear_errors() {
    let dir = TempDir::new("compat-errors");
    let seed = fixture("seed.weights.h5");
    let data = fixture("data.npz");
    let out = dir.join("run");
    let base = |extra: &[&str]| {
        let mut a = fit_args(s(&out), s(&data), s(&seed), "keras");
        a.extend_from_slice(&["--spawn-workers", "0"]);
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    // sizes that disagree with the file name the layer and both shapes
    let log = carry_it::coordinator_fails(&dir, "hidden-16", &refs(&base(&["--hidden", "16"])));
    assert!(
        log.contains("--hidden") && log.contains("16") && log.contains("8") && log.contains("lstm"),
        "{log}"
    );
    assert!(
        !out.join("checkpoint.safetensors").exists(),
        "nothing trained"
    );
    // an architecture that is not stacked LSTMs with a dense head
    let mut a = base(&[]);
    let i = a.iter().position(|x| x == "--init-from").unwrap();
    a[i + 1] = s(&fixture("gru.weights.h5")).to_string();
    let log = carry_it::coordinator_fails(&dir, "gru", &refs(&a));
    assert!(log.contains("gru") && log.contains("LSTM"), "{log}");
    // a file that is not HDF5 at all
    let junk = dir.join("junk.weights.h5");
    std::fs::write(&junk, b"not an hdf5 file").unwrap();
    let log = carry_it::coordinator_fails(
        &dir,
        "junk",
        &[
            "predict",
            "--model",
            s(&junk),
            "--inputs",
            s(&fixture("pred_x.npy")),
            "--out",
            s(&dir.join("p.npz")),
        ],
    );
    assert!(
        log.contains("junk.weights.h5") && log.contains("HDF5"),
        "{log}"
    );
    // input width that disagrees with the file
    let x3 = dir.join("x3.npy");
    write_npy(&x3, &[1, 4, 3], &[0.0; 12]).unwrap();
    let log = carry_it::coordinator_fails(
        &dir,
        "width",
        &[
            "predict",
            "--model",
            s(&seed),
            "--inputs",
            s(&x3),
            "--out",
            s(&dir.join("p.npz")),
        ],
    );
    assert!(
        log.contains("expected 2 input features") && log.contains("(1, 4, 3)"),
        "{log}"
    );
    // Keras weights files must be named *.weights.h5 (Keras refuses others)
    let log = carry_it::coordinator_fails(
        &dir,
        "export-name",
        &[
            "export",
            "--model",
            s(&seed),
            "--format",
            "keras",
            "--out",
            s(&dir.join("m.h5")),
        ],
    );
    assert!(log.contains(".weights.h5"), "{log}");
    // given weights and a resumed run are two different starts
    let log =
        carry_it::coordinator_fails(&dir, "with-resume", &refs(&base(&["--resume", s(&out)])));
    assert!(
        log.contains("--init-from") && log.contains("--resume"),
        "{log}"
    );
}
