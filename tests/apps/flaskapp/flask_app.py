"""A small Flask app: routing, JSON and form posts (needs a virtualenv with flask)."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/")
def index():
    return "flask index"


@app.route("/user/<name>")
def user(name):
    return "hello %s" % name


@app.route("/json", methods=["POST"])
def json_echo():
    data = request.get_json()
    return jsonify(got=data, n=len(data))


@app.route("/form", methods=["POST"])
def form():
    return "form %s=%s" % ("name", request.form.get("name"))


@app.route("/stream")
def stream():
    def gen():
        for i in range(3):
            yield "part %d\n" % i
    return app.response_class(gen(), mimetype="text/plain")


application = app


@app.route("/prefix")
def prefix():
    import sys
    return sys.prefix
