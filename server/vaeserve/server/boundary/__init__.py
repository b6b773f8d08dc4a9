"""The one request boundary every gRPC service passes through: ids, admission, status codes, logs, metrics."""
