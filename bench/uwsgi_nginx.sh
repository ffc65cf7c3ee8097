#!/usr/bin/env bash
# nginx (1 worker) in front of a WSGI hello world (examples/hello.py), one process of
# each app server:
#   forklift-uwsgi   nginx -> forklift over the uwsgi protocol on a unix socket, on
#                    `epoll` (the process also has the HTTP socket of the proxy rows)
#   forklift-linear  the same, forklift on `linear` (the app on the accepting thread, as
#                    uWSGI runs it: the default for a WSGI app with only uwsgi sockets)
#   uwsgi            nginx -> uWSGI (--socket, same app, 1 process) on a unix socket
#   forklift-proxy   nginx -> forklift over HTTP (proxy_pass, a connection per request)
#   forklift-proxy-ka  the same with upstream keep-alive (proxy_http_version 1.1)
# The app server is pinned to CPU 1; nginx and `wrk -t1 -c50` share CPU 0, so nginx
# can be the ceiling of req/s: each line also gives the app server's own CPU time per
# request (user + system, from /proc), which contention on CPU 0 does not change. Rounds
# alternate the five. forklift serves the uwsgi socket and the HTTP port at once.
# Needs: apt-get install -y wrk nginx-light; cargo build --release; uWSGI in a
# throwaway venv given as REF (its bin directory):
#   python3 -m venv /tmp/ref && /tmp/ref/bin/pip install uwsgi
#   REF=/tmp/ref/bin bench/uwsgi_nginx.sh
# Loopback only; every run is bounded (DUR seconds, ROUNDS rounds).
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
REF=${REF:?set REF to the bin directory of a venv with uwsgi}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
DUR=${DUR:-5}
# Extra options for the first forklift (e.g. FORKLIFT_ARGS="--threads 2").
FORKLIFT_ARGS=${FORKLIFT_ARGS:-}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18121}
APP_PORT=$((PORT + 1))
dir=$(mktemp -d)
chmod 755 "$dir"
cp examples/hello.py "$dir/hello.py"
cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/body; uwsgi_temp_path $dir/uwsgi;
    proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fcgi; scgi_temp_path $dir/scgi;
    upstream forklift_ka { server 127.0.0.1:$APP_PORT; keepalive 32; }
    server {
        listen 127.0.0.1:$PORT;
        location /forklift-uwsgi { include /etc/nginx/uwsgi_params; uwsgi_pass unix:$dir/forklift.sock; }
        location /forklift-linear { include /etc/nginx/uwsgi_params; uwsgi_pass unix:$dir/linear.sock; }
        location /uwsgi { include /etc/nginx/uwsgi_params; uwsgi_pass unix:$dir/uwsgi.sock; }
        location /forklift-proxy { proxy_pass http://127.0.0.1:$APP_PORT; }
        location /forklift-proxy-ka {
            proxy_pass http://forklift_ka; proxy_http_version 1.1; proxy_set_header Connection "";
        }
    }
}
CONF
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
( cd "$dir" && exec taskset -c 1 "$BIN" serve --wsgi-file hello.py --socket "$dir/forklift.sock" \
    --chmod-socket 666 --http 127.0.0.1:$APP_PORT --disable-logging $FORKLIFT_ARGS >/dev/null 2>&1 ) &
forklift=$!
pids+=($forklift)
( cd "$dir" && exec taskset -c 1 "$BIN" serve --wsgi-file hello.py --socket "$dir/linear.sock" \
    --chmod-socket 666 --model linear --disable-logging >/dev/null 2>&1 ) &
linear=$!
pids+=($linear)
( cd "$dir" && exec taskset -c 1 "$REF/uwsgi" --socket "$dir/uwsgi.sock" --chmod-socket=666 \
    --processes 1 --wsgi-file hello.py --disable-logging >/dev/null 2>&1 ) &
uwsgi=$!
pids+=($uwsgi)
sleep 1
taskset -c 0 "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' &
nginx=$!
pids+=($nginx)
for path in forklift-uwsgi forklift-linear uwsgi forklift-proxy forklift-proxy-ka; do
    for _ in $(seq 100); do
        [ "$(curl -s "http://127.0.0.1:$PORT/$path")" = "Hello world" ] && break
        sleep 0.1
    done
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
worker=$(pgrep -P "$nginx" | head -1)
hz=$(getconf CLK_TCK)
# One run: req/s, the app server's and nginx's CPU microseconds per request.
run() { # path, pid of the app server
    local t0 g0 out n t1 g1
    t0=$(ticks "$2")
    g0=$(ticks "$worker")
    out=$(taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "http://127.0.0.1:$PORT/$1")
    t1=$(ticks "$2")
    g1=$(ticks "$worker")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v n="$n" -v dt=$((t1 - t0)) -v dg=$((g1 - g0)) -v hz="$hz" '
        /Requests\/sec/ { rps = $2 } /Non-2xx|Socket errors/ { err = err " (" $0 ")" }
        END { printf "%s req/s, %.1f us CPU/request (nginx %.1f us)%s\n", rps,
              dt * 1e6 / hz / n, dg * 1e6 / hz / n, err }' <<<"$out"
}
for round in $(seq "$ROUNDS"); do
    echo "round $round forklift-uwsgi $(run forklift-uwsgi $forklift)"
    echo "round $round forklift-linear $(run forklift-linear $linear)"
    echo "round $round uwsgi $(run uwsgi $uwsgi)"
    echo "round $round forklift-proxy $(run forklift-proxy $forklift)"
    echo "round $round forklift-proxy-ka $(run forklift-proxy-ka $forklift)"
done
