//! Managed runtimes (issue 11): Python and Node.js functions, zipped as for
//! Lambda, run unmodified through the router with real microVMs in the
//! soft KVM host. One soft host serves every case (its boot is the slow
//! part): the router runs there with the runtime images built by
//! `images/build` (`EMBER_RUNTIME_PYTHON313`, `EMBER_RUNTIME_NODEJS20`), and
//! the cases drive its Lambda API from here, with our SigV4 client and
//! with boto3.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use ember_e2e::lambda_api::{self, zip_file, Key, Reply};
use ember_e2e::{
    artifacts_unless_skipped, exchange_until, free_port, tempdir, Artifacts, Finished,
};
use serde_json::{json, Value};

const KEY: Key = Key {
    id: "AKIAEMBERE2ERUNTIME0",
    secret: "runtime-secret-0123456789",
};

/// Longest wait for the router to answer after the soft host starts.
const READY_WITHIN: Duration = Duration::from_secs(240);

/// A router in a soft host with the runtime images; `stop` ends it.
struct Platform {
    child: Child,
    api: String,
    ctrl: u16,
    dir: PathBuf,
    done: bool,
}

fn runtime_image(var: &str) -> PathBuf {
    let p = PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run the E2E tests through tests/run (it builds the runtime images)"
        )
    }));
    assert!(
        p.is_file(),
        "{var}={} does not exist: rerun tests/run",
        p.display()
    );
    p
}

impl Platform {
    fn start(a: &Artifacts) -> Self {
        let (port, ctrl) = (free_port(), free_port());
        let dir = tempdir("runtimes");
        let python = runtime_image("EMBER_RUNTIME_PYTHON313");
        let node = runtime_image("EMBER_RUNTIME_NODEJS20");
        // Tenants (with their secrets) from a file, never argv.
        let tenants = KEY.tenant_entry("t");
        let script = format!(
            "export PATH=$PWD/bin:$PATH
             (umask 077; printf '%s' '{tenants}' >tenants.toml)
             ./ember-invoke-router serve --listen 0.0.0.0:{port} --data-dir $PWD/d \
                 --kernel vmlinux --initramfs initramfs --vmm ./ember-vmm \
                 --runtime-image python3.13=$PWD/python.ext4 --runtime-image nodejs20.x=$PWD/node.ext4 \
                 --capacity-mem-mib 3072 --capacity-vcpus 16 --tenants-file tenants.toml >router.log 2>&1 &
             router=$!
             echo ok | ./busybox nc -l -p {ctrl} >/dev/null
             kill -TERM $router; wait $router; echo \"ROUTER-EXIT $?\"
             echo '--- router log ---'
             cat router.log
             echo '--- soft host kernel log (end) ---'
             ./busybox dmesg | ./busybox tail -n 40"
        );
        let puts = [
            format!("{}:ember-invoke-router", a.router.display()),
            format!("{}:ember-vmm", a.vmm.display()),
            format!("{}:vmlinux", a.vmlinux.display()),
            format!("{}:initramfs", a.initramfs.display()),
            format!("{}:python.ext4", python.display()),
            format!("{}:node.ext4", node.display()),
            "/sbin/mkfs.ext4:bin/mkfs.ext4".to_string(),
            "/bin/busybox:busybox".to_string(),
        ];
        let mut args: Vec<String> = ["--timeout", "900", "--mem", "4096", "--forward"]
            .map(String::from)
            .to_vec();
        args.extend([port.to_string(), "--forward".into(), ctrl.to_string()]);
        for p in puts {
            args.extend(["--put".to_string(), p]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let file = |name: &str| std::fs::File::create(dir.join(name)).expect("output file");
        let child = {
            use std::os::unix::process::CommandExt;
            let mut cmd: Command = ember_e2e::softhost(&args);
            cmd.args(["sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(file("stdout"))
                .stderr(file("stderr"))
                .process_group(0)
                .spawn()
                .expect("spawn images/softhost")
        };
        let mut p = Platform {
            child,
            api: format!("127.0.0.1:{port}"),
            ctrl,
            dir,
            done: false,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = p.child.try_wait() {
                panic!("the soft host ended before the router answered");
            }
            if p.call("GET", "/2015-03-31/functions/", b"", &[])
                .is_ok_and(|r| r.status == 200)
            {
                return p;
            }
            assert!(
                start.elapsed() < READY_WITHIN,
                "the router did not answer within {READY_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn call(
        &self,
        method: &str,
        uri: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> std::io::Result<Reply> {
        lambda_api::request(&self.api, KEY, method, uri, body, extra)
    }

    fn create(&self, name: &str, runtime: &str, handler: &str, zip: &str, timeout_s: u32) {
        let body = json!({
            "FunctionName": name,
            "Runtime": runtime,
            "Role": "arn:aws:iam::123456789012:role/ember",
            "Handler": handler,
            "Code": { "ZipFile": zip },
            "MemorySize": 128,
            "Timeout": timeout_s,
            "Environment": { "Variables": { "GREETING": "hi" } },
        });
        let r = self
            .call(
                "POST",
                "/2015-03-31/functions",
                body.to_string().as_bytes(),
                &[],
            )
            .expect("CreateFunction");
        assert_eq!(r.status, 201, "CreateFunction {name}:\n{r}");
    }

    /// Invokes `name` with `payload`, asking for the log tail.
    fn invoke(&self, name: &str, payload: &Value) -> Reply {
        let uri = format!("/2015-03-31/functions/{name}/invocations");
        let started = Instant::now();
        let r = self.invoke_at(&uri, payload);
        eprintln!(
            "invoke {name} {payload}: {} ms (cold start: {})",
            started.elapsed().as_millis(),
            r.header("x-ember-cold-start").unwrap_or("?")
        );
        r
    }

    fn invoke_at(&self, uri: &str, payload: &Value) -> Reply {
        self.call(
            "POST",
            uri,
            payload.to_string().as_bytes(),
            &[("x-amz-log-type", "Tail")],
        )
        .unwrap_or_else(|e| panic!("POST {uri}: {e}"))
    }

    fn stop(&mut self) -> Finished {
        self.done = true;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = exchange_until(self.ctrl, b"stop\n", Duration::from_secs(30));
        }
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                _ if start.elapsed() > Duration::from_secs(90) => {
                    // SAFETY: kill(2) on the process group we created.
                    unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
                    break self.child.wait().ok();
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let read = |n: &str| std::fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        let out = Finished {
            code: status.and_then(|s| s.code()),
            stdout: read("stdout"),
            stderr: read("stderr"),
        };
        let _ = std::fs::remove_dir_all(&self.dir);
        out
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if !self.done {
            let out = self.stop();
            eprintln!("--- the soft host's output ---\n{out}");
        }
    }
}

/// The decoded `X-Amz-Log-Result`.
fn log_tail(r: &Reply) -> String {
    let b64 = r
        .header("x-amz-log-result")
        .unwrap_or_else(|| panic!("no X-Amz-Log-Result:\n{r}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 log tail");
    String::from_utf8_lossy(&bytes).into_owned()
}

fn slot(r: &Reply) -> String {
    r.header("x-ember-slot")
        .unwrap_or_else(|| panic!("no X-Ember-Slot:\n{r}"))
        .to_string()
}

/// Asserts a 200 with no function error and returns the payload.
fn ok(r: &Reply) -> Value {
    assert_eq!(
        (r.status, r.header("x-amz-function-error")),
        (200, None),
        "{r}"
    );
    r.json()
}

/// Asserts Lambda's answer to a failed function: 200, `Unhandled`, and the
/// error document; returns it.
fn unhandled(r: &Reply, error_type: &str) -> Value {
    assert_eq!(
        (r.status, r.header("x-amz-function-error")),
        (200, Some("Unhandled")),
        "{r}"
    );
    let doc = r.json();
    assert_eq!(doc["errorType"], error_type, "{r}");
    doc
}

const PY_MAIN: &str = r#"
import os
import time

import vendored_dep  # a dependency vendored in the zip, site-packages style

COUNT = 0
print("module loaded")


def lambda_handler(event, context):
    global COUNT
    COUNT += 1
    print("hello from python", event.get("name"))
    if "fail" in event:
        raise ValueError("boom: " + event["fail"])
    if "sleep" in event:
        time.sleep(event["sleep"])
    env = {k: os.environ.get(k) for k in (
        "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "LAMBDA_TASK_ROOT", "AWS_REGION", "TZ", "LANG", "PATH", "_HANDLER", "AWS_LAMBDA_RUNTIME_API",
        "AWS_EXECUTION_ENV", "AWS_LAMBDA_LOG_GROUP_NAME", "GREETING")}
    return {
        "count": COUNT,
        "event": event,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "remaining": context.get_remaining_time_in_millis(),
        "log_group": context.log_group_name,
        "log_stream": context.log_stream_name,
        "env": env,
        "dep": vendored_dep.VALUE,
        "uid": os.getuid(),
        "cwd": os.getcwd(),
    }
"#;

fn python_zip() -> String {
    zip_file(&[
        ("lambda_function.py", PY_MAIN.as_bytes(), 0o644),
        (
            "vendored_dep/__init__.py",
            b"VALUE = 'vendored ok'\n",
            0o644,
        ),
        (
            "src/app.py",
            b"def handler(event, context):\n    return {'nested': True}\n",
            0o644,
        ),
    ])
}

const NODE_INDEX: &str = r#"
const dep = require("vendored-dep");
let count = 0;
console.log("module loaded");
exports.handler = (event, context, callback) => {
  count += 1;
  console.log("hello from node", event.name);
  if (event.fail) throw new TypeError("boom: " + event.fail);
  if (event.reject) return callback(new Error("rejected: " + event.reject));
  const keys = ["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "LAMBDA_TASK_ROOT",
    "AWS_REGION", "TZ", "LANG", "PATH", "_HANDLER", "AWS_LAMBDA_RUNTIME_API", "AWS_EXECUTION_ENV", "GREETING"];
  const env = Object.fromEntries(keys.map((k) => [k, process.env[k]]));
  callback(null, {
    count, event, env, dep: dep("ok"),
    requestId: context.awsRequestId, functionName: context.functionName,
    memory: context.memoryLimitInMB, arn: context.invokedFunctionArn,
    remaining: context.getRemainingTimeInMillis(),
    logGroup: context.logGroupName, logStream: context.logStreamName,
    uid: process.getuid(),
  });
};
"#;

fn node_zip() -> String {
    zip_file(&[
        ("index.js", NODE_INDEX.as_bytes(), 0o644),
        (
            "node_modules/vendored-dep/package.json",
            br#"{"name":"vendored-dep","main":"main.js"}"#,
            0o644,
        ),
        (
            "node_modules/vendored-dep/main.js",
            b"module.exports = (s) => 'vendored ' + s;\n",
            0o644,
        ),
        (
            "esm.mjs",
            b"export const handler = async (event) => ({ kind: 'esm', event });\n",
            0o644,
        ),
        (
            "cjs.cjs",
            b"module.exports.handler = async () => ({ kind: 'cjs' });\n",
            0o644,
        ),
        ("mod/package.json", br#"{"type":"module"}"#, 0o644),
        (
            "mod/app.js",
            b"export const handler = async () => ({ kind: 'type-module', nested: true });\n",
            0o644,
        ),
        (
            "promise.js",
            b"exports.handler = () => Promise.resolve({ kind: 'promise' });\n",
            0o644,
        ),
    ])
}

fn python_cases(p: &Platform) {
    // 20 s: in the soft host the first invocation may include the rest of
    // an init that outlasted the 10 s init limit (as on Lambda).
    p.create(
        "py",
        "python3.13",
        "lambda_function.lambda_handler",
        &python_zip(),
        20,
    );
    let first = p.invoke("py", &json!({"name": "ada"}));
    let v = ok(&first);
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["event"], json!({"name": "ada"}));
    assert_eq!(v["function_name"], "py");
    assert_eq!(v["function_version"], "$LATEST");
    assert_eq!(v["memory"], "128");
    assert!(v["arn"].as_str().unwrap().ends_with(":function:py"), "{v}");
    assert_eq!(v["request_id"], first.header("x-amzn-requestid").unwrap());
    let remaining = v["remaining"].as_i64().unwrap();
    assert!((1..=20_000).contains(&remaining), "{v}");
    assert_eq!(v["log_group"], "/aws/lambda/py");
    assert!(
        v["log_stream"].as_str().unwrap().contains("/[$LATEST]"),
        "{v}"
    );
    let env = &v["env"];
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "py");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128");
    assert_eq!(env["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(env["TZ"], ":UTC");
    assert_eq!(env["LANG"], "en_US.UTF-8");
    assert_eq!(env["_HANDLER"], "lambda_function.lambda_handler");
    assert_eq!(env["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
    assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_python3.13");
    assert_eq!(env["GREETING"], "hi");
    assert!(env["PATH"].as_str().unwrap().contains("/usr/bin"), "{v}");
    assert_eq!(v["dep"], "vendored ok");
    assert_eq!(
        (v["uid"].as_i64(), v["cwd"].as_str()),
        (Some(1000), Some("/var/task"))
    );
    let tail = log_tail(&first);
    assert!(
        tail.contains("module loaded") || tail.contains("hello from python ada"),
        "{tail}"
    );
    assert!(tail.contains("hello from python ada"), "{tail}");

    // Warm: the same VM, module state kept.
    let second = p.invoke("py", &json!({"name": "bob"}));
    assert_eq!(ok(&second)["count"], 2, "{second}");
    assert_eq!(slot(&second), slot(&first));
    assert!(log_tail(&second).contains("hello from python bob"));

    // An exception: Lambda's error document, and the runtime stays warm.
    let failed = p.invoke("py", &json!({"fail": "x"}));
    let doc = unhandled(&failed, "ValueError");
    assert_eq!(doc["errorMessage"], "boom: x");
    let trace = doc["stackTrace"].as_array().expect("stackTrace");
    assert!(
        trace
            .iter()
            .any(|l| l.as_str().unwrap().contains("lambda_function.py")),
        "{doc}"
    );
    assert!(
        log_tail(&failed).contains("[ERROR] ValueError: boom: x"),
        "{failed}"
    );
    assert_eq!(ok(&p.invoke("py", &json!({})))["count"], 4);

    // A timeout recycles the runtime: module state starts over.
    let timed_out = p.invoke("py", &json!({"sleep": 25}));
    let doc = unhandled(&timed_out, "Sandbox.Timedout");
    assert!(
        doc["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Task timed out after 20.00 seconds"),
        "{doc}"
    );
    let after = p.invoke("py", &json!({}));
    assert_eq!(ok(&after)["count"], 1, "{after}");

    // Nested module paths, and the init errors.
    p.create(
        "py-nested",
        "python3.13",
        "src/app.handler",
        &python_zip(),
        60,
    );
    assert_eq!(
        ok(&p.invoke("py-nested", &json!({}))),
        json!({"nested": true})
    );
    p.create(
        "py-nomodule",
        "python3.13",
        "missing.handler",
        &python_zip(),
        60,
    );
    let r = p.invoke("py-nomodule", &json!({}));
    let doc = unhandled(&r, "Runtime.ImportModuleError");
    assert_eq!(
        doc["errorMessage"],
        "Unable to import module 'missing': No module named 'missing'"
    );
    p.create(
        "py-nohandler",
        "python3.13",
        "lambda_function.nothere",
        &python_zip(),
        60,
    );
    let r = p.invoke("py-nohandler", &json!({}));
    let doc = unhandled(&r, "Runtime.HandlerNotFound");
    assert_eq!(
        doc["errorMessage"],
        "Handler 'nothere' missing on module 'lambda_function'"
    );
}

fn node_cases(p: &Platform) {
    let zip = node_zip();
    p.create("js", "nodejs20.x", "index.handler", &zip, 60);
    let first = p.invoke("js", &json!({"name": "ada"}));
    let v = ok(&first);
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["event"], json!({"name": "ada"}));
    assert_eq!(v["requestId"], first.header("x-amzn-requestid").unwrap());
    assert_eq!(v["functionName"], "js");
    assert_eq!(v["memory"], "128");
    assert!(v["arn"].as_str().unwrap().ends_with(":function:js"), "{v}");
    assert!(
        (1..=60_000).contains(&v["remaining"].as_i64().unwrap()),
        "{v}"
    );
    assert_eq!(v["logGroup"], "/aws/lambda/js");
    assert!(
        v["logStream"].as_str().unwrap().contains("/[$LATEST]"),
        "{v}"
    );
    assert_eq!(v["dep"], "vendored ok");
    assert_eq!(v["uid"], 1000);
    let env = &v["env"];
    assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_nodejs20.x");
    assert_eq!(env["_HANDLER"], "index.handler");
    assert_eq!(env["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(env["TZ"], ":UTC");
    assert_eq!(env["GREETING"], "hi");
    let tail = log_tail(&first);
    let line = tail
        .lines()
        .find(|l| l.contains("hello from node ada"))
        .unwrap_or_else(|| panic!("{tail}"));
    // Lambda's console format: TIME, request id, level, message.
    let request_id = first.header("x-amzn-requestid").unwrap();
    assert!(
        line.contains(&format!("\t{request_id}\tINFO\thello from node ada")),
        "{line}"
    );

    let second = p.invoke("js", &json!({"name": "bob"}));
    assert_eq!(ok(&second)["count"], 2, "{second}");
    assert_eq!(slot(&second), slot(&first));

    let thrown = p.invoke("js", &json!({"fail": "x"}));
    let doc = unhandled(&thrown, "TypeError");
    assert_eq!(doc["errorMessage"], "boom: x");
    assert!(
        doc["trace"][0]
            .as_str()
            .unwrap()
            .starts_with("TypeError: boom: x"),
        "{doc}"
    );
    let via_callback = p.invoke("js", &json!({"reject": "y"}));
    assert_eq!(
        unhandled(&via_callback, "Error")["errorMessage"],
        "rejected: y"
    );
    assert_eq!(ok(&p.invoke("js", &json!({})))["count"], 5);

    for (name, handler, expect) in [
        (
            "js-esm",
            "esm.handler",
            json!({"kind": "esm", "event": {"a": 1}}),
        ),
        ("js-cjs", "cjs.handler", json!({"kind": "cjs"})),
        (
            "js-typemodule",
            "mod/app.handler",
            json!({"kind": "type-module", "nested": true}),
        ),
        ("js-promise", "promise.handler", json!({"kind": "promise"})),
    ] {
        p.create(name, "nodejs20.x", handler, &zip, 60);
        assert_eq!(ok(&p.invoke(name, &json!({"a": 1}))), expect, "{name}");
    }
    p.create("js-nomodule", "nodejs20.x", "missing.handler", &zip, 60);
    let doc = unhandled(
        &p.invoke("js-nomodule", &json!({})),
        "Runtime.ImportModuleError",
    );
    assert!(
        doc["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Cannot find module"),
        "{doc}"
    );
    p.create("js-nohandler", "nodejs20.x", "index.nothere", &zip, 60);
    let doc = unhandled(
        &p.invoke("js-nohandler", &json!({})),
        "Runtime.HandlerNotFound",
    );
    assert_eq!(
        doc["errorMessage"],
        "index.nothere is undefined or not exported"
    );
}

/// A Python and a Node.js function, zipped as for Lambda, created and
/// invoked through boto3 unchanged.
const BOTO3_SCRIPT: &str = r#"
import base64, io, json, sys, zipfile
import boto3

endpoint, key, secret = sys.argv[1:4]
client = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=key, aws_secret_access_key=secret)

def zipped(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()

functions = {
    "boto-py": ("python3.13", "lambda_function.lambda_handler",
                {"lambda_function.py": "def lambda_handler(event, context):\n    print('boto py', event)\n    return {'hello': event['who'], 'from': 'python'}\n"}),
    "boto-js": ("nodejs20.x", "index.handler",
                {"index.mjs": "export const handler = async (event) => {\n  console.log('boto js', event.who);\n  return { hello: event.who, from: 'node' };\n};\n"}),
}
for name, (runtime, handler, files) in functions.items():
    client.create_function(FunctionName=name, Runtime=runtime, Handler=handler,
                           Role="arn:aws:iam::123456789012:role/ember", Code={"ZipFile": zipped(files)},
                           Timeout=60)
    r = client.invoke(FunctionName=name, Payload=json.dumps({"who": "boto3"}), LogType="Tail")
    body = json.loads(r["Payload"].read())
    log = base64.b64decode(r["LogResult"]).decode()
    print(json.dumps({"name": name, "status": r["StatusCode"], "body": body,
                      "error": r.get("FunctionError"), "log_has_line": ("boto " + name[-2:]) in log}))
"#;

fn boto3_cases(p: &Platform) {
    let venv = std::env::var("EMBER_AWSCLI_VENV").unwrap_or_else(|_| "/opt/ember-awscli".into());
    let python = PathBuf::from(venv).join("bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            BOTO3_SCRIPT,
            &format!("http://{}", p.api),
            KEY.id,
            KEY.secret,
        ])
        .output()
        .unwrap_or_else(|e| panic!("{} (tests/run installs boto3 there): {e}", python.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "boto3 script failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(results.len(), 2, "{text}");
    for (r, from) in results.iter().zip(["python", "node"]) {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["error"], Value::Null, "{r}");
        assert_eq!(r["body"], json!({"hello": "boto3", "from": from}), "{r}");
        assert_eq!(r["log_has_line"], true, "{r}");
    }
}

/// Python and Node.js handlers of every kind behave as on Lambda (payloads,
/// context, environment, error documents, init errors, vendored
/// dependencies, log tails, warm state, a timeout's recycling), and boto3
/// drives both unchanged.
#[test]
fn managed_runtimes_run_functions_as_lambda_does() {
    let Some(a) = artifacts_unless_skipped("managed_runtimes_run_functions_as_lambda_does") else {
        return;
    };
    let mut p = Platform::start(&a);
    python_cases(&p);
    node_cases(&p);
    boto3_cases(&p);
    let out = p.stop();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("ROUTER-EXIT 0"), "{out}");
}
