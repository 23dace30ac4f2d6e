"""Several gateway processes on one machine (C{[server] workers}, see
docs/deployment.md, "Several processes on one machine").

twistd's process binds every listener as with one process, then, once its
store is open, starts C{workers - 1} worker processes that inherit the bound
SMTP sockets and serve them too; the kernel hands each new connection to one
of the processes waiting in C{accept()}.

  - L{mailgw.workers.pool}: twistd's side: starting, watching, restarting
    (with a back-off) and stopping the workers, and their log lines;
  - L{mailgw.workers.child}: a worker's entry point
    (C{python -m mailgw.workers.child}), run only by the pool;
  - L{mailgw.workers.channel}: what goes over the pipes between the two.
"""
