"""Seed 001's blocking app: logs the lines of numbers.txt (read from the working
directory, as in the seed), then answers Hello World."""


def application(environ, start_response):
    def my_generator(name):
        with open(name) as lines:
            yield from lines

    g = my_generator("numbers.txt")
    for k, v in enumerate(g):
        print("%s:%s" % (k, v), end="")

    start_response('200 OK', [('Content-Type', 'text/html')])
    return [b"Hello World"]
