-- Resource actions on an mlkube.io Deployment, offered only when the operator would act on them.
-- Each sets the mlkube.io/action annotation exactly as the `mlkube` CLI does; the spec (Git's)
-- is never touched.
local actions = {}
local status = obj.status or {}
local canary = status.canaryVersion ~= nil
actions["promote"] = {["disabled"] = not canary}
actions["promote-full"] = {["disabled"] = not canary}
actions["abort"] = {["disabled"] = not canary}
actions["retry"] = {["disabled"] = status.abortedVersion == nil}
actions["rollback"] = {["disabled"] = status.previousStableVersion == nil}
return actions
