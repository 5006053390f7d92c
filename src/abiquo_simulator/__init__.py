"""A stand-in Abiquo API that speaks only HTTP: the ground truth for tests, the demo and users' dry runs.

A package of its own beside abiquo_workflow, in the same distribution: it imports nothing of the product
(tests/test_layers.py fails if it does), so what it says about Abiquo comes from docs/protocol.md, not from
the
code under test. It has no server runner either: whoever runs it serves the ASGI app it builds.

In-process API::

    simulator = Simulator(callback_url="http://127.0.0.1:8080/callback", style="json", mode="3.x")
    app = create_app(simulator)                          # the ASGI app: serve it with any ASGI server
    simulator.public_api_url = "http://HOST:PORT/api/"   # where it is served, for in-process requests
                                                         # with absolute hrefs (HTTP ones read the request)
    result = await simulator.request("deploy", vm=1)     # holds a task and POSTs the callback

(The product runs it with its own runner: `abiquo_workflow.simulation.SimulatorServer` in a thread for the
tests and the demo, `abiquo_workflow.simulation.serve_simulator` for `abiquo-workflow simulate`.)

The Abiquo API, under /api (HTTP Basic: admin / xabiquo; every other seeded user's password is their nick;
JSON or XML by Accept; absolute hrefs; `startwith` / `limit` / `by` / `asc` / `has` paging)::

    GET  /api/version                                       text/plain, "3.10" (or "2.6")
    GET  /api/login                                         the authenticated user
    GET  /api/admin/roles                                   roles (paged); /api/admin/roles/{id}
    GET  /api/admin/roles/{id}/action/privileges
    GET  /api/admin/enterprises                             enterprises (paged); …/enterprises/{id}
    GET  /api/admin/enterprises/{id}/users                  users+json|xml or userswithroles+json|xml
                                                            ({id} may be `_`: every enterprise)
    GET  /api/admin/enterprises/{ent}/users/{id}            ({ent} may be `_`)
    GET  /api/admin/enterprises/{id}/action/pendingtasks    QUEUEING tasks of the enterprise
    GET  /api/admin/enterprises/{ent}/users/{id}/action/pendingtasks
    GET  /api/cloud/locations/{id}, /api/admin/datacenters/{id}
    GET  /api/cloud/virtualdatacenters/{vdc}                (+ /disks/{id}, /volumes/{id})
    GET  …/{vdc}/virtualappliances, …/virtualappliances/{vapp}, …/{vapp}/virtualmachines
    GET  …/virtualmachines/{vm}, …/{vm}/storage/disks[/{id}], …/{vm}/storage/volumes
    GET  …/virtualmachines/{vm}/tasks, …/tasks/{task}
    POST …/tasks/{task}/action/continue | …/action/cancel  optional text/plain reason; 204, or 404 TASK-1,
                                                            409 TASK-2, 403 GEN-4 (no WORKFLOW_OVERRIDE;
                                                            a requester may cancel their own task)

Paged lists link `first`, `last` and, where there is one, `previous` and `next`, except the pending-task
listings, which (as in real Abiquo) link only `self` and `parent` and are read on by `totalSize`.
Datacenters (locations and admin datacenters) link themselves as `edit`.

Mode "2.6" imitates the first workflow release: VMs carry `hdInBytes` and link their disks as `disks`
(not `harddisks`), VDCs link `datacenter` (admin/datacenters/{id}) instead of `location`, and without an
Accept header the API answers XML (the users list: usersWithRoles).

The control surface, under /_sim (JSON in and out, no auth)::

    GET    /_sim/world             the seeded enterprises, users (id, nick, role, email), VDCs, vApps, VMs
                                   (with cpu, ram_mb, disks_mb)
    POST   /_sim/requests          {"action": "deploy"|"undeploy"|"reconfigure", "vm": 1} or
                                   {"action": "deploy"|"undeploy", "vapp": 2}; optional "user" (requester,
                                   default the VM's owner), "style" ("xml" | "json", default from settings),
                                   "hrefs" ("relative" | "absolute", default relative), "callback_url"
                                   (default from settings); for a reconfigure "cpu", "ram" (MB) and "disks"
                                   (MB by sequence; each left out kept, none at all: twice the CPU and RAM),
                                   which the VM shows at once, its old sizes restored if the task is
                                   cancelled (docs/protocol.md §7.11); "lost_callback": true holds the tasks
                                   but never POSTs them (the endpoint was down; no callback URL needed);
                                   "held_for": seconds the tasks were held already (creationTimestamp).
                                   Holds QUEUEING tasks (one per VM of a vApp) and POSTs the callback
                                   before answering 201
                                   {"tasks": [{"task_id", "vm_id", "vm_name", "type"}],
                                    "callback": {"url", "content_type", "status", "error", "elapsed_ms"}}.
                                   400/404 for a request that names nothing real; 409 when no callback URL.
    GET    /_sim/tasks             every task: task_id, type, state, vm_id, vm_name, vapp_id, vdc_id,
                                   enterprise_id, requester {id, nick}, created_at, decision {by, reason,
                                   user, at} (by: continue | cancel | requester-cancel) or null
    POST   /_sim/tasks/{id}/cancel the requester cancels their own held task (optional {"reason"}); 409 if
                                   it is no longer QUEUEING
    POST   /_sim/tasks/{id}/decide {"action": "continue"|"cancel"}: an administrator decides the held task in
                                   Abiquo's "Workflow tasks" tab (no call is logged in /_sim/calls); 409 if
                                   it is no longer QUEUEING
    DELETE /_sim/tasks/{id}        the task is gone from Abiquo: reading it answers 404 TASK-1
    PUT    /_sim/users/{id}        {"role": "USER"}: an administrator gives the user another role
    GET    /_sim/calls             continue/cancel calls that reached a task, in order: task_id, action,
                                   body (the reason), content_type, status, user, at
    GET    /_sim/api-calls         every /api call: method, path, query, status (null = dropped), at
    GET    /_sim/faults            the faults still armed
    POST   /_sim/faults            {"count": 2, "status": 503} | {"count": 1, "latency": 1.5} |
                                   {"count": 1, "drop": true}, optional "match" (a path substring): the next
                                   N matching /api calls get that fault
    DELETE /_sim/faults            disarm every fault
    GET    /_sim/settings          {"callback_url", "style", "mode", "latency"}
    PUT    /_sim/settings          change any of them (latency: seconds added to every /api call)
    POST   /_sim/reset             back to the seeded world: no tasks, calls or faults (settings kept)
    GET    /                       an HTML page: request forms, tasks, calls, faults, settings

The page's forms post form-encoded bodies to /_sim/requests, /_sim/tasks/{id}/cancel,
/_sim/tasks/{id}/decide, /_sim/settings (POST) and /_sim/reset, which then redirect back to / (303).
"""

from __future__ import annotations

from .app import create_app
from .simulator import RequestResult, Simulator, SimulatorError

__all__ = ["RequestResult", "Simulator", "SimulatorError", "create_app"]
