-- `mlkube approve --reject`: record the decision in spec.approval, by Argo CD.
-- With the chart's mlkube-approval policy the change is made as Argo CD's own identity, so `by` must
-- be that identity and it needs the approve verb (a RoleBinding to mlkube-approver): every user
-- Argo CD lets run this action then approves as Argo CD. Below is a default install's in-cluster
-- identity (argocd-server runs actions); edit it for yours, or approve with `mlkube approve`.
local ARGOCD = "system:serviceaccount:argocd:argocd-server"
local os = require("os")
obj.spec.approval = {["approved"] = false, ["by"] = ARGOCD, ["at"] = os.date("!%Y-%m-%dT%XZ")}
return obj
