"""The runtime floor: how rh-prefect uses Prefect, knowing nothing of Folder, Table or Blob.

* :mod:`.tasks` - the Prefect task wrapper and the one retry policy (it asks the systems which errors are transient);
* :mod:`.dispatch` - run a deployment's flow on a work queue with blocks passed by reference, and wait for it;
* :mod:`.worker` - start, stop and check the Prefect worker that serves a cluster's work queue, over SSH;
* :mod:`.registry` - names <-> Prefect block documents (the ``Resource`` base block with Runhouse naming);
* :mod:`.local_server` - the embedded Prefect server of ``rh-prefect server up``;
* :mod:`.events` - the lineage event vocabulary (names, resource labels, roles) and the one function sending events;
* :mod:`.lineage` - a resource's lineage, read back from the Prefect server's events.

It sits above the systems and the storage formats and below the resources (see README "Concepts").
"""
