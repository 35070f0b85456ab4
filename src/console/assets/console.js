// kvreplica console
"use strict";
