"""gRPC over TLS with grpcio, without generated code: the method takes and
returns bytes.

grpc_echo.py PORT CERT KEY               serves /echo.Echo/Say, answering
                                         "echo: " and the request; prints
                                         "listening" once it accepts
grpc_echo.py client PORT CERT MESSAGE... calls it once per MESSAGE on one
                                         channel, printing each answer
"""

import sys
from concurrent import futures

import grpc


def serve(port, cert, key):
    def say(request, context):
        return b"echo: " + request

    handler = grpc.method_handlers_generic_handler("echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    with open(key, "rb") as k, open(cert, "rb") as c:
        credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def call(port, cert, messages):
    with open(cert, "rb") as c:
        credentials = grpc.ssl_channel_credentials(root_certificates=c.read())
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        say = channel.unary_unary("/echo.Echo/Say")
        for message in messages:
            print(say(message.encode(), timeout=10).decode(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        call(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        serve(*sys.argv[1:4])
