//! All process-level tests in one binary: real `coordinator` and `worker` processes talking
//! gRPC on 127.0.0.1 (port 0), compared against the in-process reference trainer.

mod cases;
