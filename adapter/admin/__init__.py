"""The operators' surfaces, served by ``tuneloop adapt`` on ``adapter.admin_port``: an authenticated admin API
(``/admin/api``) and a web console (``/console``) over the same reads (``queries.py``) and writes
(``actions.py``); who may do what is ``tokens.py``, the console's sign-in ``sessions.py``."""
