-- Resource actions on an mlkube.io ModelVersion: approve or reject it, as `mlkube approve
-- [--reject]` does. A version whose artifact failed its check cannot be approved.
local actions = {}
local approval = obj.spec.approval
local invalid = obj.status ~= nil and obj.status.phase == "Invalid"
actions["approve"] = {["disabled"] = invalid or (approval ~= nil and approval.approved == true)}
actions["reject"] = {["disabled"] = approval ~= nil and approval.approved == false}
return actions
